// Building the page. Everything that came from a person or a receiver goes in as text (text nodes, `value`,
// attributes set one by one), never as HTML: the console's Content-Security-Policy makes the browser refuse
// HTML strings anyway (require-trusted-types-for 'script').

/** An element: `h("p", {class: "note"}, "text", child, …)`. Props: `class`, `for`, `on: {event: fn}`,
 *  booleans (`hidden`, `disabled`, `checked`, `required`…) and `value` as properties, anything else as an
 *  attribute (`aria-*`, `data-*`, `id`, `href`…); `null`/`undefined`/`false` props and children are skipped. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "on") {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "for") {
      el.htmlFor = value;
    } else if (value === true || key === "value") {
      el[key] = value;
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Says `message` to screen readers (the polite live region). */
export function announce(message) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  // A new text node in a later frame, so that the same message twice is read twice.
  requestAnimationFrame(() => { region.textContent = message; });
}

const dateFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

/** A `<time>` showing an API time (RFC 3339) in the browser's time zone; "—" for null. */
export function time(iso) {
  if (!iso) return h("span", {class: "muted"}, "—");
  const at = new Date(iso);
  return h("time", {datetime: iso, title: iso}, Number.isNaN(at.getTime()) ? iso : dateFormat.format(at));
}

/** `datetime-local` input value of a `Date` (local time, to the minute). */
export function localInputValue(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** RFC 3339 (UTC) of a `datetime-local` value; "" stays "". */
export function rfc3339(localValue) {
  if (!localValue) return "";
  const at = new Date(localValue);
  return Number.isNaN(at.getTime()) ? localValue : at.toISOString();
}

/** A status badge: succeeded, failed (will retry), dead, running … */
export function badge(status, label = status) {
  return h("span", {class: `badge badge-${String(status).replace(/[^a-z]/g, "")}`}, label);
}

/** A definition list from `[term, description]` pairs (pairs whose description is `undefined` are left out). */
export function details(pairs, cls = "facts") {
  return h("dl", {class: cls}, pairs.filter(([, d]) => d !== undefined).map(([term, d]) => [h("dt", {}, term), h("dd", {}, d)]));
}

/** A text block for a body or an excerpt: pretty-printed when it is JSON, as it came otherwise. */
export function codeBlock(text, label) {
  if (text === null || text === undefined || text === "") return h("p", {class: "muted"}, "(empty)");
  let shown = text;
  try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch { /* not JSON: shown as it came */ }
  return h("pre", {class: "code", tabindex: "0", "aria-label": label}, h("code", {}, shown));
}

/** An error box for an API error or anything thrown. */
export function errorBox(err, id) {
  return h("p", {class: "error", role: "alert", id}, errorText(err));
}

/** The message of an API error (its detail, and the messages of its fields) or of any other error. */
export function errorText(err) {
  if (!err) return "";
  const parts = [err.detail || err.message || String(err)];
  for (const [field, messages] of Object.entries(err.fields || {})) {
    parts.push(`${field === "non_field_errors" ? "" : field + ": "}${[].concat(messages).join(" ")}`);
  }
  return parts.filter(Boolean).join(" — ");
}

/** A labelled form control with its hint and its error line (referenced by `aria-describedby`). */
export function field({id, label, control, hint, cls = "field"}) {
  const described = [hint && `${id}-hint`, `${id}-error`].filter(Boolean).join(" ");
  control.id = id;
  control.setAttribute("aria-describedby", described);
  return h("div", {class: cls},
    h("label", {for: id}, label),
    control,
    hint && h("p", {class: "hint", id: `${id}-hint`}, hint),
    h("p", {class: "field-error", id: `${id}-error`, hidden: true}));
}

/** Shows `messages` on the error line `errorId` and marks `control` invalid; no messages clears both. */
export function setFieldError(errorId, messages, control) {
  const line = document.getElementById(errorId);
  const text = [].concat(messages || []).join(" ");
  if (line) {
    line.textContent = text;
    line.hidden = !text;
  }
  if (control) {
    if (text) control.setAttribute("aria-invalid", "true");
    else control.removeAttribute("aria-invalid");
  }
}

/** Asks for confirmation in a modal dialog; resolves true when confirmed. Escape or Cancel resolve false. */
export function confirmDialog({title, message, confirm, danger = false}) {
  return new Promise((resolve) => {
    const titleId = "dialog-title";
    const cancelButton = h("button", {type: "button", class: "secondary", on: {click: () => dialog.close("cancel")}}, "Cancel");
    const dialog = h("dialog", {class: "dialog", "aria-labelledby": titleId, "aria-describedby": "dialog-message"},
      h("h2", {id: titleId}, title),
      h("p", {id: "dialog-message"}, message),
      h("div", {class: "actions"},
        cancelButton,
        h("button", {type: "button", class: danger ? "danger" : "primary", id: "dialog-confirm",
          on: {click: () => dialog.close("confirm")}}, confirm)));
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "confirm");
    });
    document.body.append(dialog);
    dialog.showModal();
    cancelButton.focus();
  });
}

/** A table whose rows stack into labelled cards on narrow screens (the labels come from `data-label`). */
export function table({caption, columns, rows, empty}) {
  if (rows.length === 0) return h("p", {class: "empty"}, empty);
  return h("div", {class: "table-wrap"},
    h("table", {class: "stack"},
      caption && h("caption", {class: "visually-hidden"}, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", {scope: "col"}, c.label)))),
      h("tbody", {}, rows.map((row) => h("tr", row.attrs || {},
        columns.map((c) => h("td", {"data-label": c.label}, c.cell(row.item))))))));
}

/** A button that runs `action` once at a time: disabled and marked busy while it runs. */
export function actionButton(label, action, props = {}) {
  const button = h("button", {type: "button", ...props}, label);
  button.addEventListener("click", async () => {
    if (button.disabled) return;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      await action(button);
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  });
  return button;
}
