// The reviewer's image viewer: dwv (vendored by scripts/install-viewer.py) in two panes side by side, reading the
// case's series from the node's own DICOMweb (QIDO-RS for the lists, WADO-RS for the instances) with the portal's
// session cookie. Priors are the series whose Study Instance UID is not the case's. "Add as key image" writes the
// image shown in a pane as series:instance into the report form's key-image field of the chosen level.
import {App, AppOptions, ToolConfig, ViewConfig} from "/static/vendor/dwv/dwv.min.js";

const root = document.getElementById("viewer");
const caseStudy = root.dataset.study;
const dicomweb = root.dataset.dicomweb;
const statusLine = document.getElementById("viewer-status");
const NOT_IMAGES = new Set(["SR", "DOC", "KO", "PR"]);
const WADO_ACCEPT = "application/dicom"; // one instance a request, single part: drawn as it arrives
const BATCH = 6;                          // requests in flight for one pane
const TOOLS = ["Scroll", "WindowLevel", "ZoomAndPan"];

let violations = 0;
document.addEventListener("securitypolicyviolation", () => {
  violations += 1;
  root.dataset.cspViolations = String(violations);
});

function say(text) {
  statusLine.textContent = text;
}

function first(item, tag) {
  const element = item[tag];
  return element && element.Value ? element.Value[0] : undefined;
}

async function dicomJson(path) {
  const answer = await fetch(dicomweb + path, {credentials: "same-origin",
                                               headers: {Accept: "application/dicom+json"}});
  if (!answer.ok) {
    throw new Error(`the node answered ${answer.status} for the image list`);
  }
  return answer.status === 204 ? [] : answer.json();
}

function readableDate(value) {
  return value && value.length === 8 ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6)}` : "";
}

function describe(series) {
  const parts = [`Series ${series.number}`, series.modality, series.description].filter(Boolean);
  const label = parts.join(" · ");
  return series.prior ? `Prior ${readableDate(series.date)}: ${label}` : label;
}

async function caseSeries() {
  const found = await dicomJson(`/studies/${caseStudy}/series`);
  const series = found.map((item) => ({
    uid: first(item, "0020000E"),
    study: first(item, "0020000D"),
    number: first(item, "00200011"),
    modality: first(item, "00080060") || "",
    description: first(item, "0008103E") || "",
    date: first(item, "00080020") || "",
    count: first(item, "00201209") || 0,
  })).filter((s) => !NOT_IMAGES.has(s.modality));
  for (const s of series) {
    s.prior = Boolean(s.study) && s.study !== caseStudy;
  }
  series.sort((a, b) => (a.prior - b.prior) || ((a.number ?? 1e9) - (b.number ?? 1e9)));
  return series;
}

// SOP Instance UID -> {series number, instance number}: what a key image is called in the report form.
const positions = new Map();

async function listInstances(series) {
  const found = await dicomJson(`/studies/${caseStudy}/series/${series.uid}/instances`);
  const instances = found.map((item) => ({uid: first(item, "00080018"), number: first(item, "00200013")}));
  instances.sort((a, b) => (a.number ?? 0) - (b.number ?? 0));
  for (const instance of instances) {
    positions.set(instance.uid, {series: series.number, instance: instance.number});
  }
  return instances.map((i) => `${dicomweb}/studies/${caseStudy}/series/${series.uid}/instances/${i.uid}`);
}

class Pane {
  constructor(element, allSeries) {
    this.element = element;
    this.allSeries = allSeries;
    this.choice = element.querySelector(".series-choice");
    this.info = element.querySelector(".pane-info");
    this.layerGroup = element.querySelector(".layer-group");
    this.app = null;
    this.dataId = null;
    this.reversed = undefined;
    this.renders = 0;
    this.firstRender = Promise.resolve();
    for (const [index, series] of allSeries.entries()) {
      this.choice.add(new Option(describe(series), String(index)));
    }
    this.choice.addEventListener("change", () => this.show(this.allSeries[Number(this.choice.value)]));
    element.querySelector(".previous").addEventListener("click", () => this.step(-1));
    element.querySelector(".next").addEventListener("click", () => this.step(1));
    element.querySelector(".key-pick").addEventListener("click", () => this.pickKeyImage());
  }

  newApp() {
    this.reversed = undefined;
    this.firstRender = new Promise((resolve) => {
      this.drawn = resolve;
    });
    if (this.app) {
      this.app.reset();
    }
    this.layerGroup.replaceChildren();
    const app = new App();
    const options = new AppOptions({"*": [new ViewConfig(this.layerGroup.id)]});
    options.tools = Object.fromEntries(TOOLS.map((name) => [name, new ToolConfig()]));
    app.init(options);
    app.addEventListener("load", () => {
      app.setTool(activeTool);
      this.element.dataset.loaded = "true";
      this.describeSlice();
    });
    app.addEventListener("renderend", () => this.rendered());
    app.addEventListener("loadend", () => this.drawn()); // drawn, or nothing to draw: the next pane goes on
    app.addEventListener("positionchange", () => this.describeSlice());
    app.addEventListener("error", (event) => {
      root.dataset.lastError = String((event.error && event.error.message) || event.message || event.type);
      say("An image could not be read; the other images are shown.");
    });
    this.app = app;
    return app;
  }

  async show(series) {
    this.element.dataset.loaded = "false";
    this.element.dataset.series = String(series.number);
    this.choice.value = String(this.allSeries.indexOf(series));
    const urls = await listInstances(series);
    const app = this.newApp();
    // WADO-RS, instance by instance: dwv stacks them into one volume and draws the first as soon as it is read.
    this.dataId = app.loadURLs(urls, {requestHeaders: [{name: "Accept", value: WADO_ACCEPT}], batchSize: BATCH});
    await this.firstRender;
  }

  rendered() {
    this.renders += 1;
    this.drawn();
    this.element.dataset.renders = String(this.renders);
    if (!root.dataset.firstImageMs) {
      // From the page's navigation start: opening the case to its first image drawn.
      root.dataset.firstImageMs = String(Math.round(performance.now()));
      say("Scroll with the mouse wheel or the arrows; drag to change the window (Window/level tool).");
    }
    if (!root.dataset.allDrawnMs && panes.every((pane) => pane.renders > 0)) {
      root.dataset.allDrawnMs = String(Math.round(performance.now()));
    }
  }

  layer() {
    const group = this.app && this.app.getActiveLayerGroup();
    return group ? group.getActiveViewLayer() : undefined;
  }

  currentPosition() {
    const layer = this.layer();
    const uid = layer ? layer.getViewController().getCurrentImageUid() : undefined;
    return uid ? positions.get(uid) : undefined;
  }

  describeSlice() {
    const here = this.currentPosition();
    this.element.dataset.instance = here ? String(here.instance) : "";
    this.info.textContent = here ? `Series ${here.series}, image ${here.instance}` : "";
  }

  step(direction) {
    // The arrows follow the instance numbers; dwv's slice axis may run the other way (then it is reversed once seen).
    const group = this.app && this.app.getActiveLayerGroup();
    const helper = group && group.getPositionHelper();
    if (!helper) {
      return;
    }
    const move = (forward) => (forward ? helper.incrementPositionAlongScroll() : helper.decrementPositionAlongScroll());
    const before = this.currentPosition();
    const forward = (direction > 0) !== Boolean(this.reversed);
    if (move(forward) && this.reversed === undefined) {
      const after = this.currentPosition();
      if (before && after && before.instance !== after.instance) {
        this.reversed = Math.sign(after.instance - before.instance) !== Math.sign(direction);
        if (this.reversed) {
          move(!forward);
          move(!forward);
        }
      }
    }
  }

  pickKeyImage() {
    const here = this.currentPosition();
    const level = this.element.querySelector(".key-level").value;
    const field = document.getElementById(`images.${level}`);
    if (!here || !field) {
      say("No image is shown in this pane yet.");
      return;
    }
    const reference = `${here.series}:${here.instance}`;
    const listed = field.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (!listed.includes(reference)) {
      listed.push(reference);
      field.value = listed.join(", ");
    }
    say(`Key image ${reference} is in the report under ${level}.`);
  }
}

let activeTool = "Scroll";
let panes = [];

function chooseTool(name) {
  activeTool = name;
  for (const button of root.querySelectorAll("[data-tool]")) {
    button.setAttribute("aria-pressed", String(button.dataset.tool === name));
  }
  for (const pane of panes) {
    if (pane.app && pane.element.dataset.loaded === "true") {
      pane.app.setTool(name);
    }
  }
}

async function start() {
  const allSeries = await caseSeries();
  if (allSeries.length === 0) {
    say("The case has no image series.");
    return;
  }
  panes = [...root.querySelectorAll(".pane")].map((element) => new Pane(element, allSeries));
  const current = allSeries.filter((s) => !s.prior);
  const prior = allSeries.find((s) => s.prior);
  const chosen = [current[0] || allSeries[0], prior || current[1] || allSeries[allSeries.length - 1]];
  for (const button of root.querySelectorAll("[data-tool]")) {
    button.addEventListener("click", () => chooseTool(button.dataset.tool));
  }
  root.querySelector("[data-action=reset]").addEventListener("click", () => {
    for (const pane of panes) {
      if (pane.app) {
        pane.app.resetViews();
        pane.app.resetZoomPan();
      }
    }
  });
  // One pane after the other: the first image gets the whole link (a series is one WADO-RS request).
  for (const [index, pane] of panes.entries()) {
    await pane.show(chosen[index]);
  }
}

start().catch((error) => say(`The images could not be opened: ${error.message}. Reload the page, or ask an operator.`));
