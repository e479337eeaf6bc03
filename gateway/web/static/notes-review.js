// Selecting words in the notes puts them into the "words to remove" field; typing them works without this.
document.addEventListener("mouseup", function () {
  var selection = window.getSelection();
  var text = selection ? selection.toString().replace(/\s+/g, " ").trim() : "";
  var node = selection && selection.anchorNode;
  if (!text || !node) { return; }
  var element = node.nodeType === 1 ? node : node.parentElement;
  var input = document.getElementById("phrase");
  if (input && element && element.closest(".notes-text")) { input.value = text; }
});
