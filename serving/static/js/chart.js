// One scored name as a bar chart: a bar per character (and the end token), its height the probability
// the model gave that character after the ones before it (POST /v1/score's `chars`).

const END = "."; // the end token, as /v1/score spells it

function bar(entry, index, count) {
  const column = document.createElement("div");
  column.className = "column";
  column.setAttribute("role", "listitem");
  const shown = index === count - 1 && entry.char === END ? "end" : entry.char;
  column.dataset.char = entry.char;
  column.dataset.p = String(entry.p);
  column.setAttribute("aria-label", `${shown}: probability ${entry.p.toFixed(3)}`);
  column.title = `${shown}: p = ${entry.p}, NLL ${entry.nll.toFixed(3)} nats`;
  const value = document.createElement("span");
  value.className = "p";
  value.textContent = entry.p < 0.005 ? "<.01" : entry.p.toFixed(2).replace(/^0/, "");
  const track = document.createElement("span");
  track.className = "track";
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.height = `${(entry.p * 100).toFixed(1)}%`;
  track.append(fill);
  const label = document.createElement("span");
  label.className = shown === "end" ? "char end" : "char";
  label.textContent = shown;
  column.append(value, track, label);
  return column;
}

// result: one of /v1/score's results; model: the model that scored it.
export function drawChart(figure, title, chart, result, model) {
  chart.replaceChildren(...result.chars.map((entry, i) => bar(entry, i, result.chars.length)));
  title.replaceChildren();
  const name = document.createElement("q");
  name.className = "name-text";
  name.textContent = result.name;
  title.append(name, ` by ${model}: NLL ${result.nll.toFixed(2)} nats, `
    + `${result.nll_per_char.toFixed(3)} per character, perplexity ${result.perplexity.toFixed(2)}`);
  figure.hidden = false;
}
