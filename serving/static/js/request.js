// A generate request as the page holds it: field -> the text the user typed or the URL carried, under the
// API's field names. The URL query, the form and the JSON body are three spellings of it.

// POST /v1/generate's fields (serving/api/schemas.py GenerateRequest), in the order the URL lists them.
export const FIELDS = {
  model: "text", n: "integer", seed: "integer", prefix: "text", temperature: "number", top_k: "integer",
  min_length: "integer", max_length: "integer", unique: "boolean", exclude_training: "boolean",
  sex: "text", decade: "integer", guidance: "number",
};
const JSON_NUMBER = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$/;

export function fromQuery(search) {
  const query = new URLSearchParams(search);
  const fields = {};
  for (const name of Object.keys(FIELDS)) {
    const value = query.get(name);
    if (value !== null && value !== "") fields[name] = value;
  }
  return fields;
}

export function toQuery(fields) {
  const query = new URLSearchParams();
  for (const name of Object.keys(FIELDS)) {
    if (name in fields) query.set(name, fields[name]);
  }
  return query.toString();
}

// One field's JSON. Integers travel as their digits, so seeds past 2**53 stay exact (a JavaScript number
// would round them). Text that is no number of the field's kind is sent as a string: the server's 422
// then says what is wrong, in its words.
function jsonValue(kind, text) {
  if (kind === "integer" && /^-?\d+$/.test(text)) return BigInt(text).toString();
  if (kind === "number" && JSON_NUMBER.test(text)) return text;
  if (kind === "number" && text.trim() !== "" && Number.isFinite(Number(text))) return String(Number(text));
  if (kind === "boolean" && (text === "true" || text === "false")) return text;
  return JSON.stringify(text);
}

export function toJson(fields) {
  const members = Object.keys(FIELDS).filter((name) => name in fields)
    .map((name) => `${JSON.stringify(name)}:${jsonValue(FIELDS[name], fields[name])}`);
  return `{${members.join(",")}}`;
}

// The seed a response echoes, as digits: JSON.parse would round it. Inside a JSON string every quote is
// escaped, so a name cannot hold this pattern; the top-level key comes first.
export function seedOf(responseText) {
  const match = /"seed":(\d+)/.exec(responseText);
  return match === null ? "" : match[1];
}
