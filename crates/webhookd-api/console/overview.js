// The organization at a glance (GET /api/stats/): attempts and failures over the last hour and day, and the
// webhooks failing now.

import {get} from "./api.js";
import {h, replace, table, time} from "./dom.js";

function figures(title, counts, id) {
  const failures = counts.failed + counts.dead;
  return h("section", {class: "card figure", "aria-labelledby": id},
    h("h2", {id}, title),
    h("dl", {class: "numbers"},
      h("div", {}, h("dt", {}, "Attempts"), h("dd", {"data-figure": "attempts"}, String(counts.attempts))),
      h("div", {class: counts.succeeded ? "good" : ""},
        h("dt", {}, "Succeeded"), h("dd", {"data-figure": "succeeded"}, String(counts.succeeded))),
      h("div", {class: failures ? "bad" : ""},
        h("dt", {}, "Failed"), h("dd", {"data-figure": "failures"}, String(failures))),
      h("div", {class: counts.dead ? "bad" : ""},
        h("dt", {}, "Given up"), h("dd", {"data-figure": "dead"}, String(counts.dead)))),
    h("p", {class: "hint"}, "Failed counts every failed attempt, retried or not; given up, the deliveries " +
      "that failed for good (dead)."));
}

/** Why a failing webhook is failing, in words. */
export function healthText(w) {
  if (!w.is_active && w.disabled_reason) return `Turned off: ${w.disabled_reason}`;
  if (w.consecutive_failures > 0) {
    return `${w.consecutive_failures} failed attempt${w.consecutive_failures === 1 ? "" : "s"} in a row`;
  }
  return w.is_active ? "Healthy" : "Off";
}

export async function overviewPage(ctx) {
  const stats = await get("/api/stats/");
  if (!ctx.alive()) return;
  ctx.title("At a glance");
  const failing = stats.webhooks.filter((w) => w.failing);
  replace(ctx.main,
    h("h1", {}, "At a glance"),
    h("p", {class: "lede"}, `Organization ${stats.organization}: ${stats.webhooks.length} webhook` +
      `${stats.webhooks.length === 1 ? "" : "s"}, ${stats.webhooks.filter((w) => w.is_active).length} active. ` +
      "Test pings count as attempts."),
    h("div", {class: "figures"},
      figures("Last hour", stats.last_hour, "hour-title"),
      figures("Last 24 hours", stats.last_day, "day-title")),
    h("section", {"aria-labelledby": "failing-title", id: "failing"},
      h("h2", {id: "failing-title"}, "Failing now"),
      table({
        caption: "Webhooks failing now",
        empty: "No webhook is failing.",
        columns: [
          {label: "Webhook", cell: (w) => h("a", {href: `#/webhooks/${w.id}`, class: "url"}, w.url)},
          {label: "Health", cell: (w) => h("span", {class: "bad-text"}, healthText(w))},
          {label: "Failing since", cell: (w) => time(w.failing_since)},
          {label: "Last success", cell: (w) => time(w.last_success_at)},
        ],
        rows: failing.map((w) => ({item: w})),
      })),
    h("p", {}, h("a", {href: "#/deliveries?status=dead"}, "See the deliveries that were given up"), " · ",
      h("a", {href: "#/webhooks"}, "All webhooks")));
}
