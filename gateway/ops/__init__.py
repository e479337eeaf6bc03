"""Operations: logging, status, metrics and audit."""
