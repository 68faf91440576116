// The JSON API, called with the token the person signed in with. The token lives in sessionStorage: it is
// this browser tab's only, and is gone when the tab closes or the person signs out.

const TOKEN_KEY = "webhookd.token";

/** An answer that was not a success: the API's error envelope, or why there was no answer. */
export class ApiError extends Error {
  constructor(status, body) {
    const detail = (body && body.detail) || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.detail = detail;
    this.fields = (body && body.validation_errors) || {};
    this.retryAfter = null;
  }
}

let unauthorized = () => {};

/** What to do when the API refuses the token (401): sign out, saying why. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Calls the API: `method` `path` with a JSON `body`; resolves to the JSON answer (null when empty). A
 *  `withToken` other than the session's (signing in) is tried without being kept. */
export async function call(method, path, body, withToken = token()) {
  const headers = {Accept: "application/json"};
  if (withToken) headers.Authorization = `Token ${withToken}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, {detail: `webhookd did not answer (${err.message}). Check that it is running, then retry.`});
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = {detail: text}; }
  }
  if (!response.ok) {
    const err = new ApiError(response.status, data);
    err.retryAfter = response.headers.get("Retry-After");
    if (response.status === 401 && withToken === token()) unauthorized(err);
    throw err;
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);

/** A query string of the non-empty values of `params` ("" when none). */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

let catalog = null;

/** The action catalog (`GET /api/webhooks/info/`), custom actions included, fetched once. */
export async function actions() {
  if (!catalog) catalog = await get("/api/webhooks/info/");
  return catalog;
}
