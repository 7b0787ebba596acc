// Calls to this server, retried as the SDK retries them (clients/retry.py, clients/errors.py): the same
// statuses, attempts, backoff and time bound, so the page and the SDK treat a busy server alike.

// clients/retry.py RetryPolicy's defaults.
export const RETRY = { maxAttempts: 4, backoffBase: 0.25, backoffMax: 4.0, maxElapsed: 20.0 };
const RETRY_STATUSES = new Set([429, 503]); // the server's "come back later"; anything else is its answer
export const UNREACHABLE = 0; // no HTTP answer at all: refused, reset, network down

// Full jitter: uniform in [0, cap], so clients that failed together do not come back together.
function backoff(retry) {
  return Math.random() * Math.min(RETRY.backoffMax, RETRY.backoffBase * 2 ** (retry - 1));
}

// The server said when it will have room; the jitter on top spreads the clients it told the same second.
export function waitSeconds(retry, retryAfter) {
  return retryAfter === null ? backoff(retry) : retryAfter + Math.random() * RETRY.backoffBase;
}

// Seconds from a Retry-After header: delta-seconds ("3") or an HTTP-date; null if absent or bad.
export function parseRetryAfter(value, now = Date.now()) {
  if (value === null || value.trim() === "") return null;
  let seconds = Number(value.trim());
  if (Number.isNaN(seconds)) {
    const when = Date.parse(value.trim());
    if (Number.isNaN(when)) return null;
    seconds = (when - now) / 1000;
  }
  return Math.max(0, seconds);
}

async function once(path, body) {
  const options = body === null ? { headers: { accept: "application/json" } }
    : { method: "POST", headers: { "content-type": "application/json" }, body };
  try {
    const response = await fetch(path, options);
    const text = await response.text();
    return { status: response.status, text, retryAfter: parseRetryAfter(response.headers.get("retry-after")) };
  } catch (error) { // fetch's TypeError: the request never got an answer
    return { status: UNREACHABLE, text: "", retryAfter: null, reason: String(error.message || error) };
  }
}

// GET (body null) or POST a JSON text; the last answer once it is final or the retries are spent.
// onRetry({status, attempt, wait}) is told before each wait, for the page to say it is retrying.
export async function call(path, body = null, onRetry = () => {}) {
  const started = performance.now();
  for (let attempt = 1; ; attempt += 1) {
    const answer = await once(path, body);
    if (answer.status !== UNREACHABLE && !RETRY_STATUSES.has(answer.status)) return answer;
    const elapsed = (performance.now() - started) / 1000;
    const wait = waitSeconds(attempt, answer.retryAfter);
    if (attempt >= RETRY.maxAttempts || elapsed + wait > RETRY.maxElapsed) return { ...answer, attempts: attempt };
    onRetry({ status: answer.status, attempt, wait });
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
  }
}

// ["body", "n"] -> "n"; ["body", "names", 0] -> "names"; ["body"] -> null (the body as a whole).
function fieldOf(loc) {
  const parts = Array.isArray(loc) && loc[0] === "body" ? loc.slice(1) : [];
  return typeof parts[0] === "string" ? parts[0] : null;
}

// The server's own messages, each with the field it names (or null), from either error shape it sends:
// 422 {"detail": [{"loc": [...], "msg": ...}]} or {"detail": "a human message"}.
export function errorsOf(answer) {
  let body = null;
  try { body = JSON.parse(answer.text); } catch { /* a proxy's HTML page, say */ }
  const detail = body !== null && typeof body === "object" ? body.detail : undefined;
  if (Array.isArray(detail) && detail.length > 0) {
    return detail.map((issue) => ({ field: fieldOf(issue && issue.loc), message: String(issue && issue.msg) }));
  }
  if (typeof detail === "string") return [{ field: null, message: detail }];
  const text = answer.text.split(/\s+/).join(" ").trim().slice(0, 200);
  return [{ field: null, message: text || `HTTP ${answer.status}` }];
}
