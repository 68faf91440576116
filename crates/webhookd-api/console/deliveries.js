// The delivery logs (a webhook's, and the organization's across its webhooks): newest first, paged with the API's
// cursor, filtered by status, action and time; and one delivery: the request as sent, every attempt, redeliver.

import {actions, get, post, query} from "./api.js";
import {actionButton, announce, badge, codeBlock, details, errorBox, field, h, localInputValue, replace, rfc3339,
  table, time} from "./dom.js";

const PAGE_SIZE = 25;
const SIGNATURE_HEADERS = ["webhook-id", "webhook-timestamp", "webhook-signature"];

function short(text, max = 90) {
  if (!text) return "";
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

function selectControl(options, value) {
  return h("select", {}, options.map(([v, label]) => h("option", {value: v, selected: v === value}, label)));
}

/** A log with its filters and pager. `path`: the API's log; `initial`: filters to start with; `onFilters`: told
 *  of each change of filters (the organization's page keeps them in its address). */
export async function logView(ctx, {path, showWebhook, initial = new URLSearchParams(), onFilters = () => {}}) {
  const catalog = await actions();
  const prefix = showWebhook ? "org-log" : "log";
  const status = selectControl([["", "Any"], ["succeeded", "Succeeded"], ["failed", "Failed (will retry)"],
    ["dead", "Dead (given up)"]], initial.get("status") || "");
  const action = selectControl([["", "Any"], ...Object.keys(catalog).map((a) => [a, a]), ["PING", "PING (tests)"]],
    initial.get("action") || "");
  const toLocal = (iso) => (iso && !Number.isNaN(new Date(iso).getTime()) ? localInputValue(new Date(iso)) : "");
  const since = h("input", {type: "datetime-local", value: toLocal(initial.get("since"))});
  const until = h("input", {type: "datetime-local", value: toLocal(initial.get("until"))});
  const results = h("div", {class: "log-results", "aria-live": "polite", "aria-busy": "false"});
  const pager = h("div", {class: "pager"});
  // The cursors of the pages seen so far: cursors[i] opened page i (the first page has none).
  let cursors = [""];
  let page = 0;

  const filters = () => ({status: status.value, action: action.value, since: rfc3339(since.value),
    until: rfc3339(until.value)});

  const load = async () => {
    results.setAttribute("aria-busy", "true");
    try {
      const data = await get(path + query({...filters(), cursor: cursors[page], limit: PAGE_SIZE}));
      if (!ctx.alive()) return;
      if (data.next) cursors[page + 1] = data.next;
      else cursors = cursors.slice(0, page + 1);
      replace(results, table({
        caption: "Delivery attempts, newest first",
        empty: page === 0 ? "No attempts match." : "No older attempts.",
        columns: [
          {label: "Time", cell: (a) => h("a", {href: `#/deliveries/${a.delivery_id}?attempt=${a.id}`,
            "aria-label": `Attempt ${a.attempt} of ${a.action} at ${new Date(a.created_at).toLocaleString()}`},
          time(a.created_at))},
          showWebhook ? {label: "Webhook", cell: (a) => h("a", {href: `#/webhooks/${a.webhook}`}, `Webhook ${a.webhook}`)} : null,
          {label: "Action", cell: (a) => h("code", {}, a.action)},
          {label: "Attempt", cell: (a) => String(a.attempt)},
          {label: "Status", cell: (a) => badge(a.status)},
          {label: "HTTP", cell: (a) => (a.http_status ? String(a.http_status) : "—")},
          {label: "Duration", cell: (a) => `${a.duration_ms} ms`},
          {label: "Error or response", cell: (a) => h("span", {class: "excerpt"}, short(a.error || a.response_excerpt))},
        ].filter(Boolean),
        rows: data.results.map((a) => ({item: a, attrs: {"data-attempt": String(a.id), "data-status": a.status}})),
      }));
      replace(pager,
        h("button", {type: "button", class: "secondary small", disabled: page === 0,
          on: {click: () => { page -= 1; load(); }}}, "← Newer"),
        h("span", {class: "muted"}, `Page ${page + 1}`),
        h("button", {type: "button", class: "secondary small", disabled: !cursors[page + 1], id: `${prefix}-older`,
          on: {click: () => { page += 1; load(); }}}, "Older →"));
    } catch (err) {
      replace(results, errorBox(err));
    } finally {
      results.setAttribute("aria-busy", "false");
    }
  };

  const form = h("form", {class: "filters", novalidate: true, "aria-label": "Filter the log"},
    field({id: `${prefix}-status`, label: "Status", control: status}),
    field({id: `${prefix}-action`, label: "Action", control: action}),
    field({id: `${prefix}-since`, label: "Since", control: since}),
    field({id: `${prefix}-until`, label: "Until", control: until}),
    h("div", {class: "actions"},
      h("button", {type: "submit", class: "primary", id: `${prefix}-apply`}, "Apply"),
      h("button", {type: "button", class: "secondary", id: `${prefix}-refresh`, on: {click: () => {
        cursors = [""];
        page = 0;
        load();
      }}}, "Refresh")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    cursors = [""];
    page = 0;
    onFilters(filters());
    load();
  });
  await load();
  return h("div", {class: "log", id: prefix}, form, results, pager);
}

export async function deliveriesPage(ctx) {
  ctx.title("Delivery log");
  const view = await logView(ctx, {
    path: "/api/deliveries/", showWebhook: true, initial: ctx.params,
    onFilters: (f) => history.replaceState(null, "", `#/deliveries${query(f)}`),
  });
  if (!ctx.alive()) return;
  replace(ctx.main,
    h("h1", {}, "Delivery log"),
    h("p", {class: "lede"}, "Every attempt to every webhook of the organization, newest first. Open one to " +
      "see the request as sent and what the receiver answered."),
    view);
}

function headersTable(headers, names) {
  return table({
    caption: "Request headers",
    empty: "None.",
    columns: [
      {label: "Header", cell: ([k]) => h("code", {}, k)},
      {label: "Value", cell: ([, v]) => h("code", {class: "wrap"}, typeof v === "string" ? v : JSON.stringify(v))},
    ],
    rows: Object.entries(headers).filter(([k]) => names(k)).map((pair) => ({item: pair})),
  });
}

function attemptsList(delivery, selected) {
  return h("ol", {class: "attempts", id: "attempts"}, delivery.attempts.map((a) => {
    const isSelected = String(a.id) === selected;
    return h("li", {class: `attempt card${isSelected ? " selected" : ""}`, id: `attempt-${a.id}`,
      "aria-current": isSelected ? "true" : null, "data-status": a.status},
    h("h3", {}, `Attempt ${a.attempt} `, badge(a.status)),
    details([
      ["Time", time(a.created_at)],
      ["Response status", a.http_status ? String(a.http_status) : "No answer"],
      ["Duration", `${a.duration_ms} ms`],
      ["Error", a.error ? h("span", {class: "bad-text attempt-error"}, a.error) : undefined],
      ["Next attempt", a.status === "failed" ? time(a.next_attempt_at) : undefined],
      ["Response excerpt", h("div", {class: "attempt-response"}, codeBlock(a.response_excerpt, `Response to attempt ${a.attempt}`))],
    ]));
  }));
}

export async function deliveryPage(ctx, id) {
  let delivery = await get(`/api/deliveries/${id}/`);
  if (!ctx.alive()) return;
  ctx.title(`Delivery ${delivery.id}`);
  const selected = ctx.params.get("attempt");
  const statusSlot = h("span", {id: "delivery-status"}, badge(delivery.status));
  const attemptsSlot = h("div", {}, attemptsList(delivery, selected));
  const outcome = h("div", {id: "redeliver-result", "aria-live": "polite"});
  const isTest = delivery.action === "PING";
  const redeliver = actionButton("Redeliver", async () => {
    replace(outcome);
    try {
      const before = delivery.attempts.length;
      const queued = await post(`/api/deliveries/${delivery.id}/redeliver/`);
      replace(outcome, h("p", {class: "notice"}, `Attempt ${queued.attempt} queued; waiting for a worker to send it…`));
      const deadline = Date.now() + 30000;
      while (ctx.alive() && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        delivery = await get(`/api/deliveries/${delivery.id}/`);
        if (delivery.attempts.length > before) break;
      }
      if (!ctx.alive()) return;
      const latest = delivery.attempts[delivery.attempts.length - 1];
      replace(statusSlot, badge(delivery.status));
      replace(attemptsSlot, attemptsList(delivery, String(latest.id)));
      const done = delivery.attempts.length > before;
      replace(outcome, h("p", {class: done ? "notice" : "error"}, done
        ? `Attempt ${latest.attempt}: ${latest.status}${latest.http_status ? ` (HTTP ${latest.http_status})` : ""}.`
        : `Attempt ${queued.attempt} is queued but no worker has sent it within 30 s: is a worker running?`));
      announce(outcome.textContent);
    } catch (err) {
      replace(outcome, errorBox(err));
    }
  }, {class: "primary", id: "redeliver", disabled: isTest});
  const headers = delivery.request.headers;
  replace(ctx.main,
    h("nav", {class: "crumbs", "aria-label": "Breadcrumb"}, h("a", {href: "#/deliveries"}, "Delivery log"), " / ",
      h("a", {href: `#/webhooks/${delivery.webhook}`}, `Webhook ${delivery.webhook}`)),
    h("div", {class: "page-head"},
      h("div", {}, h("h1", {}, "Delivery ", h("code", {class: "wrap"}, delivery.id))),
      h("div", {class: "actions"}, redeliver)),
    isTest ? h("p", {class: "hint"}, "A test ping is not redelivered: send a new test from its webhook.") : null,
    outcome,
    details([
      ["Status", statusSlot],
      ["Action", h("code", {}, delivery.action)],
      ["Webhook", h("a", {href: `#/webhooks/${delivery.webhook}`}, `Webhook ${delivery.webhook}`)],
      ["Event", h("code", {class: "wrap"}, delivery.event_id)],
    ]),
    h("section", {"aria-labelledby": "request-title", class: "block"},
      h("h2", {id: "request-title"}, "Request"),
      h("p", {}, "As webhookd sends it now, rebuilt from the stored event and the webhook's current settings. " +
        "Secrets are redacted."),
      details([["POST to", delivery.request.url ? h("span", {class: "url", id: "request-url"}, delivery.request.url)
        : "(the webhook was deleted)"]]),
      h("h3", {}, "Signature headers"),
      h("div", {id: "signature-headers"}, headersTable(headers, (k) => SIGNATURE_HEADERS.includes(k))),
      h("h3", {}, "Other headers"),
      h("div", {id: "request-headers"}, headersTable(headers, (k) => !SIGNATURE_HEADERS.includes(k))),
      h("h3", {}, "Body"),
      h("div", {id: "request-body"}, delivery.request.body === null
        ? h("p", {class: "muted"}, "The event is no longer stored (past the retention period).")
        : codeBlock(delivery.request.body, "Request body"))),
    h("section", {"aria-labelledby": "attempts-title", class: "block"},
      h("h2", {id: "attempts-title"}, "Attempts"),
      attemptsSlot));
  const target = selected && document.getElementById(`attempt-${selected}`);
  if (target) target.scrollIntoView({block: "nearest"});
}
