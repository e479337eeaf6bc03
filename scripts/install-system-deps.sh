#!/bin/sh
# Install the real DICOM peers and the database the test suite and benchmarks use, when missing:
# DCMTK (storescu, storescp, echoscu, dcmdump, dsrdump), Orthanc and its DICOMweb plugin, PostgreSQL 15, iproute2,
# util-linux (unshare);
# tesseract with its English data (the OCR of burned-in text), the headers and pkg-config that tesserocr
# compiles against (pip builds it from source on `make venv`), and the DejaVu font the OCR tests draw with;
# chromium and chromium-driver (the portal's browser tests drive Debian's chromium through its chromedriver);
# the notes PDF's fonts (fonts-dejavu-core, fonts-wqy-microhei).
#
# the notes scrubber's vocabularies: Debian's word lists (English, German, Swiss German, French, Danish, Swedish,
# Norwegian, Spanish) and medical word lists (hunspell-en-med, wgerman-medical), read as data
# (gateway/privacy/vocabulary.py).
#
# With --runtime, only what the node itself needs to install and run (`make run`): tesseract and what tesserocr
# compiles against, the notes PDF's fonts and the scrubber's word lists.
set -eu
missing=""
if [ "${1:-}" != "--runtime" ]; then
  [ -x /usr/bin/storescu ] && [ -x /usr/bin/dsrdump ] || missing="$missing dcmtk"
  [ -x /usr/sbin/Orthanc ] || missing="$missing orthanc"
  # Orthanc's DICOMweb plugin: bench/dicomweb.py compares the node's DICOMweb with it on the same study.
  [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$missing orthanc-dicomweb"
  [ -x /usr/lib/postgresql/15/bin/initdb ] || missing="$missing postgresql-15"
  command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
  command -v unshare >/dev/null 2>&1 || missing="$missing util-linux"
  [ -x /usr/bin/chromium ] || missing="$missing chromium"
  [ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
fi
[ -f /usr/share/tesseract-ocr/5/tessdata/eng.traineddata ] || missing="$missing tesseract-ocr tesseract-ocr-eng"
[ -f /usr/include/tesseract/baseapi.h ] || missing="$missing libtesseract-dev"
[ -f /usr/include/leptonica/allheaders.h ] || missing="$missing libleptonica-dev"
command -v pkg-config >/dev/null 2>&1 || missing="$missing pkg-config"
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$missing fonts-dejavu-core"
# The notes PDF also embeds WenQuanYi Micro Hei for CJK letters.
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing="$missing fonts-wqy-microhei"
for list in british-english-large:wbritish-large american-english-large:wamerican-large ngerman:wngerman \
            swiss:wswiss french:wfrench danish:wdanish swedish:wswedish bokmaal:wnorwegian spanish:wspanish \
            german-medical:wgerman-medical; do
  [ -f "/usr/share/dict/${list%%:*}" ] || missing="$missing ${list#*:}"
done
[ -f /usr/share/hunspell/en_med_glut.dic ] || missing="$missing hunspell-en-med"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "error: missing system packages:$missing (run 'sudo apt-get install$missing')" >&2
  exit 1
fi
echo "installing system packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
