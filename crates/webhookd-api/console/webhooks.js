// The webhooks: the list with each one's health, and the settings form (create and edit) with Label Studio's
// fields. The API checks every field; its messages are shown next to the field they name.

import {actions, call, get} from "./api.js";
import {announce, badge, errorBox, errorText, field, h, replace, setFieldError, table, time} from "./dom.js";
import {healthText} from "./overview.js";

/** "Organization" or "Project 7". */
export function scopeText(w) {
  return w.project === null ? "Whole organization" : `Project ${w.project}`;
}

/** "All actions" or the action names. */
export function actionsText(w) {
  if (w.send_for_all_actions) return "All actions";
  return w.actions.length ? w.actions.join(", ") : "No action (nothing is sent)";
}

export async function webhooksPage(ctx) {
  const [hooks, stats] = await Promise.all([get("/api/webhooks/"), get("/api/stats/")]);
  if (!ctx.alive()) return;
  ctx.title("Webhooks");
  const health = new Map(stats.webhooks.map((w) => [w.id, w]));
  replace(ctx.main,
    h("div", {class: "page-head"},
      h("h1", {}, "Webhooks"),
      h("a", {href: "#/webhooks/new", class: "button primary", id: "new-webhook"}, "New webhook")),
    table({
      caption: "Webhooks of the organization",
      empty: "No webhooks yet. Create one to have events posted to a URL.",
      columns: [
        {label: "Post to URL", cell: (w) => h("a", {href: `#/webhooks/${w.id}`, class: "url"}, w.url)},
        {label: "Scope", cell: scopeText},
        {label: "Actions", cell: actionsText},
        {label: "Active", cell: (w) => (w.is_active ? badge("succeeded", "Active") : badge("off", "Off"))},
        {label: "Health", cell: (w) => h("span", {class: w.consecutive_failures > 0 || w.disabled_reason ? "bad-text" : ""},
          healthText(w), w.failing_since ? [" since ", time(w.failing_since)] : null)},
        {label: "Last success", cell: (w) => time(health.get(w.id)?.last_success_at)},
      ],
      rows: hooks.map((w) => ({item: w, attrs: {"data-webhook": String(w.id)}})),
    }));
}

/** The form's fields and the API fields whose errors they show. */
const ERROR_LINES = {
  url: "url", project: "project", actions: "actions", send_for_all_actions: "actions",
  headers: "headers", send_payload: "send-payload", is_active: "is-active",
};

function headerRow(name = "", value = "") {
  const n = h("input", {type: "text", class: "header-name", value: name, autocomplete: "off", spellcheck: "false",
    "aria-label": "Header name"});
  const v = h("input", {type: "text", class: "header-value", value, autocomplete: "off", spellcheck: "false",
    "aria-label": "Header value"});
  const row = h("li", {class: "header-row"}, n, v,
    h("button", {type: "button", class: "secondary small", on: {click: () => { row.remove(); announce("Header removed."); }}},
      "Remove"));
  return row;
}

export async function webhookFormPage(ctx, id) {
  const [catalog, hook] = await Promise.all([actions(), id ? get(`/api/webhooks/${id}/`) : null]);
  if (!ctx.alive()) return;
  const editing = Boolean(hook);
  const w = hook || {url: "", project: null, send_payload: true, send_for_all_actions: true, headers: {},
    is_active: true, actions: []};
  ctx.title(editing ? "Edit webhook" : "New webhook");

  const url = h("input", {type: "url", name: "url", value: w.url, autocomplete: "off", spellcheck: "false",
    required: true, placeholder: "https://example.com/label-studio-hook"});
  const wholeOrg = h("input", {type: "radio", name: "scope", id: "scope-org", value: "org", checked: w.project === null,
    disabled: editing});
  const oneProject = h("input", {type: "radio", name: "scope", id: "scope-project", value: "project",
    checked: w.project !== null, disabled: editing});
  const project = h("input", {type: "text", inputmode: "numeric", name: "project", autocomplete: "off",
    value: w.project === null ? "" : String(w.project), disabled: editing || w.project === null});
  const allActions = h("input", {type: "radio", name: "which-actions", id: "actions-all", value: "all",
    checked: w.send_for_all_actions});
  const chosenActions = h("input", {type: "radio", name: "which-actions", id: "actions-chosen", value: "chosen",
    checked: !w.send_for_all_actions});
  const boxes = Object.entries(catalog).map(([action, spec]) => {
    const box = h("input", {type: "checkbox", name: "action", value: action, id: `action-${action}`,
      checked: w.actions.includes(action)});
    box.dataset.organizationOnly = String(Boolean(spec["organization-only"]));
    return h("li", {}, box, h("label", {for: `action-${action}`}, spec.name, " ", h("code", {}, action),
      spec["organization-only"] ? h("span", {class: "muted"}, " (organization-level webhooks only)") : null));
  });
  const sendPayload = h("input", {type: "checkbox", name: "send_payload", checked: w.send_payload});
  const active = h("input", {type: "checkbox", name: "is_active", checked: w.is_active});
  const headers = h("ul", {class: "header-rows", id: "header-rows"},
    Object.entries(w.headers).map(([k, v]) => headerRow(k, typeof v === "string" ? v : JSON.stringify(v))));

  const sync = () => {
    project.disabled = editing || !oneProject.checked;
    const actionList = document.getElementById("action-list");
    if (actionList) actionList.hidden = !chosenActions.checked;
  };
  for (const input of [wholeOrg, oneProject, allActions, chosenActions]) input.addEventListener("change", sync);

  const general = h("div", {id: "form-errors"});
  const form = h("form", {class: "card webhook-form", novalidate: true, "aria-describedby": "form-errors"},
    general,
    field({id: "url", label: "Post to URL", control: url,
      hint: "Where webhookd sends a POST for each event. Its host must resolve to an address webhookd may reach."}),
    h("fieldset", {"aria-describedby": "project-hint project-error"},
      h("legend", {}, "Send events of"),
      h("div", {class: "choice"}, wholeOrg, h("label", {for: "scope-org"}, "The whole organization")),
      h("div", {class: "choice"}, oneProject, h("label", {for: "scope-project"}, "One project")),
      field({id: "project", label: "Project id", control: project, cls: "field nested"}),
      editing ? h("p", {class: "hint", id: "project-hint"}, "A webhook's scope is set when it is created.") : null),
    h("fieldset", {"aria-describedby": "actions-error"},
      h("legend", {}, "Actions"),
      h("div", {class: "choice"}, allActions, h("label", {for: "actions-all"}, "Send for all actions")),
      h("div", {class: "choice"}, chosenActions, h("label", {for: "actions-chosen"}, "Only the actions chosen below")),
      h("ul", {class: "action-list", id: "action-list", hidden: w.send_for_all_actions}, boxes),
      h("p", {class: "field-error", id: "actions-error", hidden: true})),
    h("div", {class: "field"},
      h("div", {class: "choice"}, sendPayload, h("label", {for: "send-payload"}, "Send payload")),
      h("p", {class: "hint", id: "send-payload-hint"}, "Off: the body is only {\"action\": …}."),
      h("p", {class: "field-error", id: "send-payload-error", hidden: true})),
    h("fieldset", {"aria-describedby": "headers-hint headers-error"},
      h("legend", {}, "Headers"),
      h("p", {class: "hint", id: "headers-hint"}, "Static headers added to every request (up to 10), e.g. an " +
        "Authorization header your receiver checks."),
      headers,
      h("button", {type: "button", class: "secondary small", id: "add-header", on: {click: () => {
        const row = headerRow();
        headers.append(row);
        row.querySelector("input").focus();
      }}}, "Add header"),
      h("p", {class: "field-error", id: "headers-error", hidden: true})),
    h("div", {class: "field"},
      h("div", {class: "choice"}, active, h("label", {for: "is-active"}, "Active")),
      h("p", {class: "hint", id: "is-active-hint"}, "Off: nothing is sent; retries already scheduled end as dead."),
      h("p", {class: "field-error", id: "is-active-error", hidden: true})),
    h("div", {class: "actions"},
      h("button", {type: "submit", class: "primary", id: "save"}, editing ? "Save" : "Create webhook"),
      h("a", {href: editing ? `#/webhooks/${id}` : "#/webhooks", class: "button secondary"}, "Cancel")));
  sendPayload.id = "send-payload";
  sendPayload.setAttribute("aria-describedby", "send-payload-hint send-payload-error");
  active.id = "is-active";
  active.setAttribute("aria-describedby", "is-active-hint is-active-error");

  const controls = {url, project, actions: chosenActions, headers: headers, "send-payload": sendPayload,
    "is-active": active};

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(general);
    for (const [line, control] of Object.entries(controls)) setFieldError(`${line}-error`, null, control);
    const body = {
      url: url.value.trim(),
      send_payload: sendPayload.checked,
      send_for_all_actions: allActions.checked,
      actions: boxes.map((li) => li.querySelector("input")).filter((b) => b.checked).map((b) => b.value),
      headers: Object.fromEntries([...headers.querySelectorAll(".header-row")]
        .map((row) => [row.querySelector(".header-name").value.trim(), row.querySelector(".header-value").value])
        .filter(([k, v]) => k || v)),
      is_active: active.checked,
    };
    if (!editing) {
      const raw = project.value.trim();
      body.project = oneProject.checked ? (/^\d+$/.test(raw) ? Number(raw) : raw) : null;
    }
    const save = form.querySelector("#save");
    save.disabled = true;
    try {
      const saved = await call(editing ? "PATCH" : "POST", editing ? `/api/webhooks/${id}/` : "/api/webhooks/", body);
      announce(editing ? "Webhook saved." : "Webhook created.");
      window.location.hash = `#/webhooks/${saved.id}`;
    } catch (err) {
      showErrors(err, form, general, controls);
    } finally {
      save.disabled = false;
    }
  });

  replace(ctx.main,
    h("nav", {class: "crumbs", "aria-label": "Breadcrumb"}, h("a", {href: "#/webhooks"}, "Webhooks"),
      editing ? [" / ", h("a", {href: `#/webhooks/${id}`}, `Webhook ${id}`)] : null),
    h("h1", {}, editing ? "Edit webhook" : "New webhook"),
    form);
  sync();
}

/** Puts each field error next to its field, and the rest (errors of no single field, or of no field the form
 *  has, or an error that names no field: the webhook limit, a 503…) at the top of the form; then focuses the
 *  first, in the form's order. */
function showErrors(err, form, general, controls) {
  const unplaced = {};
  for (const [apiField, messages] of Object.entries(err.fields)) {
    const line = ERROR_LINES[apiField];
    if (line) setFieldError(`${line}-error`, messages, controls[line]);
    else unplaced[apiField] = messages;
  }
  const named = Object.keys(err.fields).length > 0;
  if (!named || Object.keys(unplaced).length > 0) {
    replace(general, errorBox(named ? {detail: "Not saved", fields: unplaced} : err));
  }
  announce(`Not saved: ${errorText(err)}`);
  const invalid = form.querySelector("[aria-invalid=true], .error");
  const target = invalid && invalid.matches("ul") ? invalid.querySelector("input") || form.querySelector("#add-header") : invalid;
  if (target) {
    if (!target.matches("input, button, select, textarea")) target.setAttribute("tabindex", "-1");
    target.focus();
  }
}
