// The page's wiring: the form and the URL hold one generate request; answers become names, a chart or
// messages next to the fields they name. Everything the server sends is inserted as text.
import { UNREACHABLE, call, errorsOf } from "./api.js";
import { drawChart } from "./chart.js";
import { FIELDS, fromQuery, seedOf, toJson, toQuery } from "./request.js";
import { copyText, download, showNames, toCsv } from "./results.js";

const $ = (id) => document.getElementById(id);
const models = new Map(); // name -> /v1/models entry
let shown = { model: "", seed: "", names: [] }; // the last names shown

function say(message, kind = "info") {
  $("status").textContent = message;
  $("status").dataset.kind = kind;
}

function clearErrors() {
  for (const node of document.querySelectorAll(".error")) node.textContent = "";
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

// Each message next to the field it names, in the server's words; the rest in the status line.
function showErrors(errors, status) {
  const general = [];
  for (const { field, message } of errors) {
    const slot = field === null ? null : $(`${field}-error`);
    if (slot === null) { general.push(message); continue; }
    slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
    document.querySelector(`[aria-describedby~="${field}-error"]`)?.setAttribute("aria-invalid", "true");
  }
  say(general.length ? `HTTP ${status}: ${general.join("; ")}` : `HTTP ${status}: see the marked field.`, "error");
}

function onRetry({ status, attempt, wait }) {
  const why = status === UNREACHABLE ? "No answer from the server" : `The server is busy (HTTP ${status})`;
  say(`${why}; trying again in ${wait.toFixed(1)} s (attempt ${attempt + 1}).`, "busy");
}

function showFailure(answer, fieldFor404) {
  if (answer.status === UNREACHABLE) {
    say(`Cannot reach the server at ${location.origin} (${answer.reason}), after ${answer.attempts} tries. `
      + "Is it running? `make run` starts it.", "error");
  } else if (answer.status === 429 || answer.status === 503) {
    const message = errorsOf(answer).map((e) => e.message).join("; ");
    say(`The server is busy (HTTP ${answer.status}) and still was after ${answer.attempts} tries: `
      + `${message}. Try again in a moment.`, "error");
  } else {
    const errors = errorsOf(answer);
    const named = answer.status === 404 ? errors.map((e) => ({ ...e, field: e.field ?? fieldFor404 })) : errors;
    showErrors(named, answer.status);
  }
}

async function loadModels() {
  const answer = await call("/v1/models", null, onRetry);
  if (answer.status !== 200) { showFailure(answer, null); return; }
  const listing = JSON.parse(answer.text);
  const select = $("model");
  select.replaceChildren();
  for (const model of listing.models) {
    models.set(model.name, model);
    const valNll = model.metrics.val_nll;
    const label = `${model.name} (${model.type}, val NLL ${valNll === undefined ? "?" : valNll.toFixed(3)})`;
    select.append(new Option(label, model.name, false, model.name === listing.default));
  }
  if (listing.models.length === 0) say("The server serves no model yet; publish one (`make run` does).", "error");
}

// The sex and decade lists offer the chosen model's values, guidance shows its default; a model without
// conditions leaves all three disabled and empty.
function showConditions() {
  const model = models.get($("model").value);
  const conditions = model?.conditions ?? {};
  for (const name of ["sex", "decade"]) {
    const select = $(name);
    const kept = select.value;
    select.replaceChildren(new Option("any", ""), ...(conditions[name] ?? []).map((value) => new Option(value, value)));
    select.disabled = !(name in conditions);
    select.value = [...select.options].some((option) => option.value === kept) ? kept : "";
  }
  const guidance = $("guidance");
  guidance.placeholder = model === undefined ? "" : String(model.guidance);
  guidance.disabled = Object.keys(conditions).length === 0;
  if (guidance.disabled) guidance.value = "";
}

function chooseModel(name) {
  const select = $("model");
  if (name === undefined) return;
  if (![...select.options].some((option) => option.value === name)) {
    select.append(new Option(`${name} (not served)`, name)); // sent as asked: the server says why not
  }
  select.value = name;
}

function fillForm(fields) {
  chooseModel(fields.model);
  showConditions();
  for (const [name, kind] of Object.entries(FIELDS)) {
    if (name === "model") continue;
    if (kind === "boolean") $(name).checked = fields[name] === "true";
    else if ($(name).tagName === "SELECT" && fields[name] !== undefined &&
             ![...$(name).options].some((option) => option.value === fields[name])) {
      $(name).append(new Option(fields[name], fields[name])); // sent as asked: the server's 422 lists the values
      $(name).value = fields[name];
    }
    else $(name).value = fields[name] ?? "";
  }
  syncSlider();
}

function readForm() {
  const fields = {};
  for (const [name, kind] of Object.entries(FIELDS)) {
    const control = $(name);
    if (kind === "boolean") { if (control.checked) fields[name] = "true"; continue; }
    const value = kind === "text" ? control.value : control.value.trim();
    if (value !== "") fields[name] = value;
  }
  return fields;
}

function syncSlider() {
  const value = Number($("temperature").value || "1");
  if ($("temperature").value.trim() === "" || Number.isFinite(value)) $("temperature-slider").value = String(value);
}

function showGeneration(fields, answer) {
  const body = JSON.parse(answer.text);
  shown = { model: body.model, seed: seedOf(answer.text), names: body.names };
  const vocabSize = models.get(body.model)?.vocab.length ?? 27;
  showNames($("names"), body.names, vocabSize, scoreName);
  $("results-meta").textContent = `${body.names.length} from ${body.model} (version ${body.version}),`;
  $("seed-used").textContent = shown.seed;
  const exhausted = $("exhausted");
  exhausted.hidden = !body.exhausted;
  exhausted.textContent = body.exhausted ? `Only ${body.names.length} of the ${fields.n ?? 10} names asked for `
    + "passed the filters before the attempts ran out: loosen them, or ask for fewer." : "";
  $("results").hidden = false;
  history.replaceState(null, "", `?${toQuery({ ...fields, model: body.model, seed: shown.seed })}`);
  say(`${body.names.length} names.`);
}

// Runs one request; `record` puts it in the URL first (a new history entry when it changed).
async function generate(fields, record = true) {
  const query = `?${toQuery(fields)}`;
  if (record && query !== location.search) history.pushState(null, "", query);
  clearErrors();
  say("Generating…", "busy");
  $("generate").setAttribute("aria-busy", "true");
  const answer = await call("/v1/generate", toJson(fields), onRetry);
  $("generate").removeAttribute("aria-busy");
  if (answer.status === 200) showGeneration(fields, answer);
  else showFailure(answer, "model");
}

// "emma sounds F (0.98), most likely decade 2010 (0.31)": score explain, in words.
function explanation(result) {
  const parts = Object.entries(result.most_likely).map(([condition, value]) =>
    `${condition === "sex" ? "" : `most likely ${condition} `}${value} (${result.posterior[condition][value].toFixed(2)})`);
  return `${result.name} sounds ${parts.join(", ")}.`;
}

async function scoreName(name) {
  $("names-error").textContent = "";
  const model = $("model").value;
  const explain = Object.keys(models.get(model)?.conditions ?? {}).length > 0;
  const request = { names: [name], ...(model ? { model } : {}), ...(explain ? { explain } : {}) };
  const answer = await call("/v1/score", JSON.stringify(request), onRetry);
  if (answer.status !== 200) { showFailure(answer, "model"); return; }
  const body = JSON.parse(answer.text);
  drawChart($("chart-figure"), $("chart-title"), $("chart"), body.results[0], body.model);
  say(`Scored by ${body.model}.${explain ? " " + explanation(body.results[0]) : ""}`);
}

function wire() {
  $("request").addEventListener("submit", (event) => { event.preventDefault(); generate(readForm()); });
  $("again").addEventListener("click", () => { $("seed").value = shown.seed; generate(readForm()); });
  $("new-seed").addEventListener("click", () => { $("seed").value = ""; generate(readForm()); });
  $("temperature-slider").addEventListener("input", (event) => { $("temperature").value = event.target.value; });
  $("temperature").addEventListener("input", syncSlider);
  $("model").addEventListener("change", showConditions);
  $("score-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("score-name").value !== "") scoreName($("score-name").value);
  });
  $("copy").addEventListener("click", async () => {
    try {
      await copyText(shown.names.map((entry) => entry.name).join("\n"));
      $("copied").textContent = `Copied ${shown.names.length} names.`;
    } catch (error) { $("copied").textContent = `Could not copy: ${error.message}`; }
  });
  $("download").addEventListener("click", () => download(`names-${shown.model}-${shown.seed}.csv`,
    toCsv(shown.names), "text/csv;charset=utf-8"));
  window.addEventListener("popstate", () => {
    const fields = fromQuery(location.search);
    fillForm(fields);
    if (Object.keys(fields).length > 0) generate(fields, false);
  });
}

async function start() {
  wire();
  await loadModels();
  const fields = fromQuery(location.search);
  fillForm(fields);
  if (Object.keys(fields).length > 0) await generate(fields, false);
}

start();
