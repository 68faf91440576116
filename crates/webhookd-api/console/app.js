// The console's frame: signing in and out, and the pages, one per address after the `#`:
//   #/                      the organization at a glance          (overview.js)
//   #/webhooks              the webhooks                          (webhooks.js)
//   #/webhooks/new          a new webhook                         (webhooks.js)
//   #/webhooks/7            one webhook: test, log, secret, replays (webhook.js)
//   #/webhooks/7/edit       its settings                          (webhooks.js)
//   #/deliveries            the organization's delivery log       (deliveries.js)
//   #/deliveries/msg_…      one delivery and its attempts         (deliveries.js)

import {ApiError, call, onUnauthorized, setToken, token} from "./api.js";
import {announce, errorBox, field, h, replace, setFieldError} from "./dom.js";
import {overviewPage} from "./overview.js";
import {webhookFormPage, webhooksPage} from "./webhooks.js";
import {webhookPage} from "./webhook.js";
import {deliveriesPage, deliveryPage} from "./deliveries.js";

const main = document.getElementById("main");
const ORG_KEY = "webhookd.organization";

const routes = [
  [/^\/$/, overviewPage, "overview"],
  [/^\/webhooks$/, webhooksPage, "webhooks"],
  [/^\/webhooks\/new$/, (ctx) => webhookFormPage(ctx, null), "webhooks"],
  [/^\/webhooks\/(\d+)$/, (ctx, id) => webhookPage(ctx, Number(id)), "webhooks"],
  [/^\/webhooks\/(\d+)\/edit$/, (ctx, id) => webhookFormPage(ctx, Number(id)), "webhooks"],
  [/^\/deliveries$/, deliveriesPage, "deliveries"],
  [/^\/deliveries\/([A-Za-z0-9_-]+)$/, (ctx, id) => deliveryPage(ctx, id), "deliveries"],
];

// Each render gets a number; work a page started (polling, late answers) stops once another page is shown.
let shown = 0;

function location() {
  const raw = window.location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = raw.split("?");
  return {path, params: new URLSearchParams(search)};
}

/** Shows the page of the current address, or the sign-in form when no token is kept. */
async function render({focus = true, message} = {}) {
  const generation = ++shown;
  const signedIn = Boolean(token());
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("session").hidden = !signedIn;
  if (!signedIn) {
    signInPage(message);
    return;
  }
  document.getElementById("who").textContent = `Organization ${sessionStorage.getItem(ORG_KEY) || "?"}`;
  const {path, params} = location();
  const route = routes.find(([pattern]) => pattern.test(path));
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (route && link.dataset.nav === route[2]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const ctx = {
    main, params,
    alive: () => generation === shown,
    title: (text) => { document.title = `${text} · webhookd console`; },
  };
  replace(main, h("p", {class: "loading", "aria-busy": "true"}, "Loading…"));
  try {
    if (!route) {
      ctx.title("Not found");
      replace(main, h("h1", {tabindex: "-1"}, "Not found"), h("p", {}, "There is no such page. ",
        h("a", {href: "#/"}, "Back to the overview.")));
    } else {
      await route[1](ctx, ...path.match(route[0]).slice(1));
    }
  } catch (err) {
    if (!ctx.alive() || (err instanceof ApiError && err.status === 401)) return;
    ctx.title("Error");
    const notFound = err instanceof ApiError && err.status === 404;
    replace(main, h("h1", {tabindex: "-1"}, notFound ? "Not found" : "Something went wrong"),
      notFound ? h("p", {role: "alert"}, "This organization has nothing at this address.") : errorBox(err));
  }
  if (focus && ctx.alive()) {
    const heading = main.querySelector("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus();
    }
  }
}

function signInPage(message) {
  document.title = "Sign in · webhookd console";
  const input = h("input", {type: "password", name: "token", autocomplete: "off", spellcheck: "false",
    required: true});
  const form = h("form", {class: "card sign-in", novalidate: true},
    h("h1", {tabindex: "-1"}, "Sign in"),
    message && h("p", {class: "notice", role: "status"}, message),
    field({id: "token", label: "API token", control: input,
      hint: "Mint one with: webhookd token create --organization <id>. It stays in this browser tab only, " +
        "until you sign out or close the tab."}),
    h("div", {class: "actions"}, h("button", {type: "submit", class: "primary"}, "Sign in")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = input.value.trim();
    if (!candidate) {
      setFieldError("token-error", "Enter an API token.", input);
      input.focus();
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const stats = await call("GET", "/api/stats/", undefined, candidate);
      setToken(candidate);
      sessionStorage.setItem(ORG_KEY, String(stats.organization));
      announce(`Signed in to organization ${stats.organization}.`);
      await render();
    } catch (err) {
      setFieldError("token-error", err.status === 401 ? `${err.detail} Check the token and try again.` : err.detail, input);
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  replace(main, form);
  input.focus();
}

function signOut(message) {
  setToken(null);
  sessionStorage.removeItem(ORG_KEY);
  render({message});
}

onUnauthorized((err) => signOut(`The API refused the token (${err.detail}). Sign in again.`));
document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
document.getElementById("skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", () => render());
render({focus: false});
