// One webhook: its settings and health, the test ping, its delivery log, recovering failed deliveries, its
// signing secret (reveal, rotate, how to verify) and its replays.

import {call, get, post} from "./api.js";
import {actionButton, announce, badge, codeBlock, confirmDialog, details, errorBox, field, h, localInputValue,
  replace, rfc3339, table, time} from "./dom.js";
import {healthText} from "./overview.js";
import {actionsText, scopeText} from "./webhooks.js";
import {logView} from "./deliveries.js";

export async function webhookPage(ctx, id) {
  const [w, stats] = await Promise.all([get(`/api/webhooks/${id}/`), get("/api/stats/")]);
  if (!ctx.alive()) return;
  ctx.title(`Webhook ${id}`);
  const health = stats.webhooks.find((s) => s.id === id) || {};
  const failing = w.consecutive_failures > 0 || (!w.is_active && w.disabled_reason);
  replace(ctx.main,
    h("nav", {class: "crumbs", "aria-label": "Breadcrumb"}, h("a", {href: "#/webhooks"}, "Webhooks")),
    h("div", {class: "page-head"},
      h("div", {},
        h("h1", {class: "url"}, w.url),
        h("p", {class: "lede"}, `Webhook ${id} · ${scopeText(w)} · `,
          w.is_active ? badge("succeeded", "Active") : badge("off", "Off"))),
      h("div", {class: "actions"},
        h("a", {href: `#/webhooks/${id}/edit`, class: "button secondary", id: "edit-webhook"}, "Edit"),
        actionButton("Delete", () => deleteWebhook(w), {class: "danger", id: "delete-webhook"}))),
    details([
      ["Actions", actionsText(w)],
      ["Send payload", w.send_payload ? "Yes" : "No: the body is only the action"],
      ["Headers", Object.keys(w.headers).length ? Object.keys(w.headers).join(", ") : "None"],
      ["Health", h("span", {class: failing ? "bad-text" : "", id: "health"}, healthText(w))],
      ["Failing since", w.failing_since ? time(w.failing_since) : undefined],
      ["Last success", time(health.last_success_at)],
    ]),
    testSection(id),
    h("section", {"aria-labelledby": "log-title", class: "block"},
      h("h2", {id: "log-title"}, "Delivery log"),
      await logView(ctx, {path: `/api/webhooks/${id}/deliveries/`, showWebhook: false}),
      recoverForm(id)),
    secretSection(id),
    await replaysSection(ctx, id));
}

async function deleteWebhook(w) {
  const sure = await confirmDialog({
    title: "Delete this webhook?",
    message: `${w.url} will receive nothing more; its delivery log stays readable. This cannot be undone.`,
    confirm: "Delete webhook", danger: true,
  });
  if (!sure) return;
  try {
    await call("DELETE", `/api/webhooks/${w.id}/`);
    announce("Webhook deleted.");
    window.location.hash = "#/webhooks";
  } catch (err) {
    document.getElementById("delete-webhook").after(errorBox(err));
  }
}

function testSection(id) {
  const result = h("div", {id: "test-result", "aria-live": "polite"});
  const button = actionButton("Send test ping", async () => {
    replace(result, h("p", {class: "muted"}, "Sending…"));
    try {
      const t = await post(`/api/webhooks/${id}/test/`);
      replace(result, h("div", {class: `outcome ${t.status === "succeeded" ? "good" : "bad"}`},
        h("p", {class: "outcome-line"}, badge(t.status), " ",
          t.http_status ? `HTTP ${t.http_status}` : "No answer", ` in ${t.duration_ms} ms`),
        details([
          ["Error", t.error ? h("span", {id: "test-error"}, t.error) : undefined],
          ["Response", h("div", {id: "test-response"}, codeBlock(t.response_excerpt, "Response excerpt"))],
          ["Delivery", h("a", {href: `#/deliveries/${t.delivery_id}`}, t.delivery_id)],
        ])));
      announce(`Test ping ${t.status}${t.http_status ? `: HTTP ${t.http_status}` : ""}.`);
    } catch (err) {
      replace(result, errorBox(err));
    }
  }, {class: "primary", id: "test-webhook"});
  return h("section", {"aria-labelledby": "test-title", class: "block"},
    h("h2", {id: "test-title"}, "Test the connection"),
    h("p", {}, "Sends a signed ", h("code", {}, "PING"), " to the URL now and shows what came back."),
    button, result);
}

function recoverForm(id) {
  const since = h("input", {type: "datetime-local", value: localInputValue(new Date(Date.now() - 24 * 3600e3))});
  const outcome = h("div", {id: "recover-result", "aria-live": "polite"});
  const form = h("form", {class: "inline-form", novalidate: true},
    field({id: "recover-since", label: "Since", control: since}),
    h("button", {type: "submit", class: "secondary", id: "recover"}, "Redeliver failed deliveries"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const r = await post(`/api/webhooks/${id}/recover/`, {since: rfc3339(since.value)});
      replace(outcome, h("p", {class: "notice"}, `Queued ${r.redelivered} deliver${r.redelivered === 1 ? "y" : "ies"} ` +
        "for redelivery (those whose latest attempt since then failed for good, or whose retry is overdue)."));
    } catch (err) {
      replace(outcome, errorBox(err));
    }
  });
  return h("div", {class: "sub-block"}, h("h3", {}, "Recover"), form, outcome);
}

const SNIPPET = `# pip install standardwebhooks
from standardwebhooks import Webhook, WebhookVerificationError

wh = Webhook(SIGNING_SECRET)  # "whsec_…", shown above

def handle(raw_body: bytes, headers: dict) -> int:  # header names in lower case
    try:
        body = wh.verify(raw_body, headers)  # webhook-id, webhook-timestamp, webhook-signature
    except WebhookVerificationError:
        return 401
    if seen_before(headers["webhook-id"]):  # the same on every retry and redelivery
        return 200
    process(body)
    return 204`;

function secretSection(id) {
  const shown = h("div", {id: "secret", "aria-live": "polite"});
  const reveal = actionButton("Reveal secret", async () => {
    try {
      const s = await get(`/api/webhooks/${id}/secret/`);
      replace(shown, h("p", {}, h("code", {class: "secret", id: "secret-key"}, s.key)));
    } catch (err) {
      replace(shown, errorBox(err));
    }
  }, {class: "secondary", id: "reveal-secret"});
  const rotate = actionButton("Rotate secret", async () => {
    const sure = await confirmDialog({
      title: "Rotate the signing secret?",
      message: "A new secret signs from now on. The current one keeps signing alongside it for the grace " +
        "period, so receivers can switch without missing a request.",
      confirm: "Rotate",
    });
    if (!sure) return;
    try {
      const s = await post(`/api/webhooks/${id}/secret/rotate/`);
      replace(shown,
        h("p", {}, "New secret: ", h("code", {class: "secret", id: "secret-key"}, s.key)),
        h("p", {class: "notice", id: "secret-grace"}, "The previous secret keeps signing alongside it until ",
          time(s.previous_valid_until), ": switch your receivers to the new one before then."));
      announce("Secret rotated.");
    } catch (err) {
      replace(shown, errorBox(err));
    }
  }, {class: "secondary", id: "rotate-secret"});
  return h("section", {"aria-labelledby": "secret-title", class: "block"},
    h("h2", {id: "secret-title"}, "Signing secret"),
    h("p", {}, "Every request is signed (Standard Webhooks): check ", h("code", {}, "webhook-signature"),
      " with this secret before trusting a body."),
    h("div", {class: "actions"}, reveal, rotate),
    shown,
    h("details", {class: "snippet"},
      h("summary", {}, "Verify signatures in your receiver (Python)"),
      codeBlock(SNIPPET, "Signature verification example")));
}

async function replaysSection(ctx, id) {
  const list = h("div", {id: "replays"});
  const outcome = h("div", {id: "replay-result", "aria-live": "polite"});
  const refresh = async () => {
    const replays = await get(`/api/webhooks/${id}/replays/`);
    if (!ctx.alive()) return;
    replace(list, table({
      caption: "Replays of this webhook",
      empty: "No replays yet.",
      columns: [
        {label: "Started", cell: (r) => time(r.created_at)},
        {label: "Window", cell: (r) => [time(r.since), " to ", time(r.until)]},
        {label: "State", cell: (r) => [badge(r.state), r.error ? [" ", r.error] : null]},
        {label: "Progress", cell: (r) => h("span", {class: "progress"},
          h("progress", {max: String(Math.max(r.total, 1)), value: String(r.queued),
            "aria-label": `${r.queued} of ${r.total} events queued`}),
          ` ${r.queued}/${r.total} queued · ${r.sent} sent · ${r.failed} failed · ${r.left} left`)},
        {label: "", cell: (r) => (r.state === "running"
          ? actionButton("Cancel", async () => {
            try {
              await call("DELETE", `/api/replays/${r.id}/`);
              announce("Replay cancelled.");
            } catch (err) {
              replace(outcome, errorBox(err));
            }
            await refresh();
          }, {class: "secondary small", "data-cancel-replay": r.id})
          : null)},
      ],
      rows: replays.map((r) => ({item: r, attrs: {"data-replay": r.id, "data-state": r.state}})),
    }));
    // Followed while it runs, then less often while its deliveries are still under way.
    const pace = replays.some((r) => r.state === "running") ? 1000 : replays.some((r) => r.left > 0) ? 5000 : 0;
    if (pace) setTimeout(() => { if (ctx.alive()) refresh().catch((err) => replace(outcome, errorBox(err))); }, pace);
  };
  const since = h("input", {type: "datetime-local", value: localInputValue(new Date(Date.now() - 3600e3))});
  const until = h("input", {type: "datetime-local"});
  const form = h("form", {class: "inline-form", novalidate: true},
    field({id: "replay-since", label: "Events since", control: since}),
    field({id: "replay-until", label: "Until (empty: now)", control: until}),
    h("button", {type: "submit", class: "secondary", id: "start-replay"}, "Start replay"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(outcome);
    try {
      const r = await post(`/api/webhooks/${id}/replay/`, {since: rfc3339(since.value), until: rfc3339(until.value) || undefined});
      replace(outcome, h("p", {class: "notice"}, `Replay started: ${r.total} event${r.total === 1 ? "" : "s"} to send.`));
      await refresh();
    } catch (err) {
      replace(outcome, errorBox(err));
    }
  });
  await refresh();
  return h("section", {"aria-labelledby": "replays-title", class: "block"},
    h("h2", {id: "replays-title"}, "Replays"),
    h("p", {}, "Send the stored events of a window again, as new deliveries: to backfill a new webhook, or to " +
      "catch up after it was off."),
    form, outcome, list);
}
