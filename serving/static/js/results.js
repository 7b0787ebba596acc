// The names a generation gave: a list with each name's NLL and a bar for its likelihood, copy and CSV.
// Names are model output: they go into the page as text nodes only, never as HTML.

// How likely the model finds a name, per character, from 0 (no better than a uniform guess over its
// vocabulary) to 1 (certain): 1 - (NLL per token) / ln(vocabulary size). Tokens: characters + end.
export function likelihood(name, nll, vocabSize) {
  const perToken = nll / ([...name].length + 1);
  return Math.min(1, Math.max(0, 1 - perToken / Math.log(Math.max(2, vocabSize))));
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function nameItem(entry, vocabSize, onSelect) {
  const item = element("li");
  const button = element("button", "name");
  button.type = "button";
  button.append(element("span", "name-text", entry.name));
  const share = likelihood(entry.name, entry.nll, vocabSize);
  const bar = element("span", "bar");
  const fill = element("span", "bar-fill");
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  bar.append(fill);
  button.append(element("span", "nll", `NLL ${entry.nll.toFixed(2)}`), bar);
  button.title = `NLL ${entry.nll} nats; ${(share * 100).toFixed(0)}% of the way from a uniform guess to certain`;
  button.addEventListener("click", () => onSelect(entry.name));
  item.append(button);
  return item;
}

export function showNames(list, names, vocabSize, onSelect) {
  list.replaceChildren(...names.map((entry) => nameItem(entry, vocabSize, onSelect)));
}

// RFC 4180: a field with a comma, quote or line break is quoted, its quotes doubled.
function csvField(text) {
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

export function toCsv(names) {
  return ["name,nll", ...names.map((entry) => `${csvField(entry.name)},${entry.nll}`)].join("\r\n") + "\r\n";
}

export function download(filename, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = element("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// The clipboard API needs a secure context (https, or this machine); elsewhere the old way.
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = element("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  const copied = document.execCommand("copy");
  area.remove();
  if (!copied) throw new Error("the browser refused to copy");
}
