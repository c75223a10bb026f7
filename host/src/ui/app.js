// wasmhook dashboard. Plain JavaScript, no build step, no dependencies.
//
// Every action is a call to the REST API with the signed-in key as a bearer
// token: the page can do nothing the API forbids. The key lives in this
// tab's sessionStorage only (never a cookie, never a URL, gone with the tab).
// Every string that came from a tenant is put in the page as text
// (textContent), never as HTML, so a description like <script> shows as
// written. The page is served with a CSP that forbids inline scripts.
//
// Portal mode: a portal link (`/ui/#portal=whp_…`) opens the page for one
// application's customer. The token comes in the fragment, which the
// browser never sends, is moved to sessionStorage like a key, and the
// address bar is cleared. The page then shows that application's
// endpoints and deliveries only — and the API refuses the token anywhere
// else, so hiding the rest here is for clarity, not for safety.
"use strict";

const KEY = "wasmhook.key";
const ROLE = "wasmhook.role";
const POLL_MS = 3000;

let pollTimer = null;
// The portal link's application, read-only flag and event types (GET /v1/portal).
let portal = null;

function role() { return sessionStorage.getItem(KEY) ? sessionStorage.getItem(ROLE) : null; }
function readOnly() { return role() === "portal" && portal && portal.read_only; }

// A portal link just opened: its token becomes this tab's credential.
function takePortalLink() {
  const m = /^#portal=(whp_[0-9a-f]+)$/.exec(location.hash);
  if (!m) return;
  sessionStorage.setItem(KEY, m[1]);
  sessionStorage.setItem(ROLE, "portal");
  portal = null;
  history.replaceState(null, "", location.pathname + "#/endpoints");
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// `opts.raw`: a wasm upload; `opts.probe`: a 401 is an answer, not a
// reason to sign out (the sign-in itself).
async function api(method, path, body, opts) {
  const raw = opts && opts.raw;
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(KEY) };
  let payload;
  if (raw) {
    payload = raw;
    headers["Content-Type"] = "application/wasm";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const res = await fetch(path, { method, headers, body: payload, credentials: "omit", cache: "no-store" });
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) {
    const err = data && data.error ? data.error : { code: "http_" + res.status, message: text || res.statusText };
    if (res.status === 401 && !(opts && opts.probe) && sessionStorage.getItem(KEY)) {
      signOut(role() === "portal"
        ? "This portal link has expired or was revoked. Ask for a new one."
        : "Your key was refused (revoked or wrong). Sign in again.");
    }
    throw new ApiError(res.status, err.code, err.message);
  }
  return data;
}

// ---------- DOM helpers (text only, never HTML) ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let uid = 0;
function field(labelText, input, hint) {
  const id = input.id || "f" + ++uid;
  input.id = id;
  return h("div", {}, h("label", { for: id }, labelText), input, hint ? h("p", { class: "hint" }, hint) : null);
}

function statusBadge(s) {
  return h("span", { class: "status status-" + s }, s);
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return isNaN(d) ? String(ts) : d.toLocaleString();
}

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
}

function main() { return document.getElementById("main"); }

function render(title, ...content) {
  const m = main();
  m.replaceChildren(h("h1", {}, title), ...content.flat(Infinity).filter((c) => c !== null && c !== undefined));
  document.title = title + " · wasmhook";
}

function showError(container, e) {
  const msg = e instanceof ApiError ? `${e.message} (${e.code}, HTTP ${e.status})` : String(e.message || e);
  const p = h("p", { class: "error", role: "alert" }, msg);
  place(container, p);
  return p;
}

function notice(container, text) {
  const p = h("p", { class: "notice", role: "status" }, text);
  place(container, p);
  return p;
}

// A message goes under the page's title, or first in its form.
function place(container, p) {
  const title = container.querySelector(":scope > h1");
  if (title) title.after(p); else container.prepend(p);
}

// A button that runs an async action, disabled while it runs; errors are shown above it.
function action(label, run, cls) {
  const b = h("button", { type: "button", class: cls || "" }, label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await run(b); } catch (e) { showError(main(), e); } finally { b.disabled = false; }
  });
  return b;
}

// An action or a timer started on one page re-renders that page only while
// the user is still on it: re-rendering the page they moved to meanwhile (a
// refresh a second after "Flush now", a slow save) would throw away what
// they are typing there.
function refreshIfStill(here, delayMs) {
  const go = () => { if (location.hash === here) route(); };
  if (delayMs) setTimeout(go, delayMs); else go();
}

function link(href, text) { return h("a", { href }, text); }

function rowLink(href, cells) {
  const tr = h("tr", { class: "clickable", tabindex: "0", dataset: { href } }, cells);
  tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A" && ev.target.tagName !== "BUTTON") location.hash = href; });
  tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") location.hash = href; });
  return tr;
}

// ---------- sign in / out ----------

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    await api("GET", "/v1/subscriptions", undefined, { probe: true });
    sessionStorage.setItem(ROLE, "tenant");
    return "tenant";
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 401) { sessionStorage.removeItem(KEY); throw e; }
  }
  try {
    await api("GET", "/v1/tenants", undefined, { probe: true });
    sessionStorage.setItem(ROLE, "operator");
    return "operator";
  } catch (e) {
    sessionStorage.removeItem(KEY);
    throw new ApiError(401, "unauthorized", "That key is neither a tenant's API key nor the operator token.");
  }
}

function signOut(why) {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ROLE);
  portal = null;
  // Without a hashchange: its route() would render the page again without `why`.
  history.replaceState(null, "", location.pathname + "#/");
  route(why);
}

function signInPage(why) {
  const input = h("input", { type: "password", name: "key", autocomplete: "current-password", required: true });
  const form = h("form", { class: "card", id: "signin" },
    field("API key or operator token", input, "A tenant's API key (whk_…) opens its endpoints; the operator token opens the tenants. It stays in this tab only."),
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    input.value = "";
    try {
      const role = await signIn(key);
      location.hash = role === "operator" ? "#/tenants" : "#/endpoints";
      route();
    } catch (e) { showError(form, e); }
  });
  render("Sign in", form);
  if (why) notice(main(), why);
  input.focus();
}

// ---------- navigation ----------

const TENANT_NAV = [["#/endpoints", "Endpoints"], ["#/deliveries", "Deliveries"], ["#/apps", "Applications"], ["#/catalog", "Event types"], ["#/sources", "Sources"], ["#/plugins", "Plugins"], ["#/windows", "Windows"], ["#/ops", "Alerts"]];
const OPERATOR_NAV = [["#/tenants", "Tenants"]];
const PORTAL_NAV = [["#/endpoints", "Endpoints"], ["#/deliveries", "Deliveries"]];

function renderNav(who) {
  const nav = document.getElementById("nav");
  if (!who) { nav.replaceChildren(); return; }
  const items = who === "operator" ? OPERATOR_NAV : who === "portal" ? PORTAL_NAV : TENANT_NAV;
  const here = location.hash.split("?")[0];
  nav.replaceChildren(
    who === "portal" && portal ? h("span", { id: "portal-app", class: "muted" }, portal.app.name + (portal.read_only ? " (read-only)" : "")) : null,
    ...items.map(([href, text]) => h("a", { href, "aria-current": here.startsWith(href) ? "page" : null }, text)),
    h("button", { type: "button", onclick: () => signOut("Signed out.") }, "Sign out"));
}

// Disabled endpoints, on every tenant page: the owner sees it at once.
async function refreshBanner() {
  const banner = document.getElementById("banner");
  if (role() !== "tenant" && role() !== "portal") { banner.replaceChildren(); return; }
  try {
    const subs = await api("GET", "/v1/subscriptions");
    banner.replaceChildren(...subs.filter((s) => !s.enabled).map((s) =>
      h("p", {}, "Endpoint ", link("#/endpoints/" + s.id, s.url), " is disabled: ", s.disabled_reason || "by an operator", ".")));
  } catch (_) { /* the page shows its own error */ }
}

function parseHash() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(query || "") };
}

async function route(why) {
  if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  takePortalLink();
  const who = role();
  if (who === "portal" && !portal) {
    try { portal = await api("GET", "/v1/portal"); } catch (e) { if (role()) { render("Something went wrong"); showError(main(), e); } return; }
  }
  renderNav(who);
  if (!who) { document.getElementById("banner").replaceChildren(); return signInPage(why); }
  const { parts, params } = parseHash();
  refreshBanner();
  try {
    if (who === "operator") return await tenantsPage();
    if (who === "portal" && !["endpoints", "deliveries"].includes(parts[0])) {
      location.replace("#/endpoints");
      return await endpointsPage();
    }
    switch (parts[0]) {
      case "endpoints":
        if (parts[1] === "new") return await endpointForm(null);
        if (parts[1] && parts[2] === "edit") return await endpointForm(parts[1]);
        if (parts[1]) return await endpointPage(parts[1], params);
        return await endpointsPage();
      case "deliveries":
        if (parts[1]) return await deliveryPage(parts[1]);
        return await deliveriesPage(params);
      case "apps": return await appsPage();
      case "catalog": return await catalogPage(params);
      case "plugins": return await pluginsPage();
      case "windows": return await windowsPage();
      case "sources": return await sourcesPage();
      case "ops": return await opsPage();
      default:
        location.replace("#/endpoints");
        return await endpointsPage();
    }
  } catch (e) {
    render("Something went wrong");
    showError(main(), e);
  }
}

// ---------- endpoints ----------

async function endpointsPage() {
  const subs = await api("GET", "/v1/subscriptions");
  const rows = subs.map((s) => rowLink("#/endpoints/" + s.id, [
    h("td", {}, link("#/endpoints/" + s.id, s.url), s.description ? h("div", { class: "muted" }, s.description) : null),
    h("td", {}, s.event_types.join(", ")),
    h("td", { class: "hide-narrow" }, s.plugin ? s.plugin.id : "—"),
    h("td", {}, statusBadge(s.enabled ? "enabled" : "disabled"), s.enabled ? null : h("div", { class: "muted" }, s.disabled_reason || "")),
    h("td", {}, String(s.consecutive_failures)),
    h("td", { class: "hide-narrow" }, String(s.queued_deliveries)),
  ]));
  render(portal ? "Endpoints of " + portal.app.name : "Endpoints",
    readOnly() ? null : h("div", { class: "actions" }, h("a", { class: "button", href: "#/endpoints/new" }, "Add endpoint")),
    subs.length === 0 ? h("p", { class: "muted" }, "No endpoints yet.") :
      h("div", { class: "table-wrap" }, h("table", { id: "endpoints" },
        h("thead", {}, h("tr", {}, ["URL", "Events", "Plugin", "State", "Failure streak", "Queued"].map((t, i) => h("th", { scope: "col", class: i === 2 || i === 5 ? "hide-narrow" : null }, t)))),
        h("tbody", {}, rows))));
}

async function pluginChoices() {
  const plugins = await api("GET", "/v1/plugins");
  return plugins.map((p) => ({ id: p.id, label: p.builtin ? `${p.name} (bundled)` : `${p.name} ${p.version}` }));
}

// The events an endpoint takes: all, or the listed types and patterns.
function eventsFieldset(sub, extra) {
  const all = sub ? sub.event_types.includes("*") : true;
  const allEvents = h("input", { type: "checkbox", name: "all_events", checked: all });
  const types = h("input", { type: "text", name: "event_types", value: sub && !all ? sub.event_types.join(", ") : "", placeholder: "message.created, conversation.*" });
  const sync = () => { types.disabled = allEvents.checked; };
  allEvents.addEventListener("change", sync);
  sync();
  const element = h("fieldset", {}, h("legend", {}, "Events"),
    h("label", { class: "inline" }, allEvents, "All events"),
    field("Event types", types, "Comma-separated: exact types, prefix.* patterns."), extra || null);
  const read = () => allEvents.checked ? ["*"] : types.value.split(",").map((t) => t.trim()).filter(Boolean);
  return { element, read };
}

// Creates (no `sub`) or changes an endpoint, then opens its page.
async function saveEndpoint(sub, input) {
  const saved = sub
    ? await api("PATCH", "/v1/subscriptions/" + encodeURIComponent(sub.id), input)
    : await api("POST", "/v1/subscriptions", input);
  location.hash = "#/endpoints/" + saved.id;
}

// Save and Cancel of an endpoint's form.
function endpointFormActions(sub) {
  return h("div", { class: "actions" }, h("button", { type: "submit" }, sub ? "Save" : "Add endpoint"),
    h("a", { class: "button secondary", href: sub ? "#/endpoints/" + sub.id : "#/endpoints" }, "Cancel"));
}

async function endpointForm(id) {
  if (role() === "portal") return portalEndpointForm(id);
  const sub = id ? await api("GET", "/v1/subscriptions/" + encodeURIComponent(id)) : null;
  const plugins = await pluginChoices();
  const dest = sub ? sub.destination : { type: "http" };
  const kind = h("select", { name: "destination_type" }, [["http", "HTTP POST"], ["nats", "NATS JetStream subject"], ["amqp", "RabbitMQ (AMQP) exchange"], ["redis", "Redis stream"]].map(([v, label]) =>
    h("option", { value: v, selected: dest.type === v }, label)));
  const url = h("input", { type: "text", name: "url", required: true, value: sub ? sub.url : "", placeholder: "https://example.com/webhook" });
  const subject = h("input", { type: "text", name: "destination_subject", value: dest.subject || "", placeholder: "crm.leads" });
  const exchange = h("input", { type: "text", name: "destination_exchange", value: dest.exchange || "", placeholder: "empty: the default exchange" });
  const routingKey = h("input", { type: "text", name: "destination_routing_key", value: dest.routing_key || "", placeholder: "a queue's name on the default exchange" });
  const stream = h("input", { type: "text", name: "destination_stream", value: dest.stream || "", placeholder: "crm:leads" });
  const maxLen = h("input", { type: "number", name: "destination_max_len", min: "1", step: "1", value: dest.max_len ? String(dest.max_len) : "", placeholder: "100000" });
  const placeholders = { http: "https://example.com/webhook", nats: "nats://user:password@nats.example.com:4222", amqp: "amqp://user:password@rabbit.example.com:5672/vhost", redis: "redis://:password@redis.example.com:6379/0" };
  const perKind = {
    nats: h("fieldset", { id: "destination-nats" }, h("legend", {}, "NATS"), field("Subject", subject, "A JetStream stream must capture it; the delivery id is the Nats-Msg-Id.")),
    amqp: h("fieldset", { id: "destination-amqp" }, h("legend", {}, "RabbitMQ"), field("Exchange", exchange), field("Routing key", routingKey, "Persistent, with publisher confirms; an unroutable message is a failed attempt.")),
    redis: h("fieldset", { id: "destination-redis" }, h("legend", {}, "Redis"), field("Stream", stream), field("Keep about this many entries", maxLen)),
  };
  const credentialsNote = h("p", { class: "muted" }, dest.password_set ? "A password is stored (never shown); leave it out of the URL to keep it." : "Credentials in the URL are stored sealed and never shown again.");
  const syncKind = () => {
    url.placeholder = placeholders[kind.value];
    for (const [k, el] of Object.entries(perKind)) el.hidden = kind.value !== k;
    credentialsNote.hidden = kind.value === "http";
  };
  kind.addEventListener("change", syncKind);
  syncKind();
  const events = eventsFieldset(sub);
  const plugin = h("select", { name: "plugin" }, h("option", { value: "" }, "None (send the event as is)"),
    plugins.map((p) => h("option", { value: p.id, selected: sub && sub.plugin && sub.plugin.id === p.id }, p.label)));
  const config = h("textarea", { name: "plugin_config", rows: "4" }, sub && sub.plugin ? JSON.stringify(sub.plugin.config, null, 2) : "{}");
  const scheme = h("select", { name: "signature" }, ["standard-webhooks", "timestamped-hex", "body-hex", "chatwoot", "svix"].map((s) =>
    h("option", { value: s, selected: sub && sub.signature.scheme === s }, s)));
  const preset = h("select", { name: "retry" }, ["standard", "onwebchat", "convosphere", "helloclient", "ohallo"].map((p) =>
    h("option", { value: p, selected: sub && sub.retry.preset === p }, p)));
  const every = h("input", { type: "text", name: "window_every", value: sub && sub.window ? sub.window.every : "", placeholder: "1d, 1h, 15m (empty: no window)" });
  const at = h("input", { type: "text", name: "window_at", value: sub && sub.window ? sub.window.at : "", placeholder: "00:00" });
  const tz = h("input", { type: "text", name: "window_timezone", value: sub && sub.window ? sub.window.timezone : "", placeholder: "UTC" });
  const description = h("input", { type: "text", name: "description", value: sub && sub.description ? sub.description : "" });
  const orderKey = h("input", { type: "text", name: "ordering_key", value: sub && sub.ordering ? sub.ordering.key : "", placeholder: "/data/conversation_id (empty: unordered)" });
  const onFailure = h("select", { name: "ordering_on_failure" }, ["skip", "block"].map((p) =>
    h("option", { value: p, selected: sub && sub.ordering && sub.ordering.on_failure === p }, p)));
  const perSecond = h("input", { type: "number", name: "rate_per_second", min: "0.01", step: "any", value: sub && sub.rate_limit ? String(sub.rate_limit.per_second) : "", placeholder: "attempts a second (empty: no limit)" });
  const burst = h("input", { type: "number", name: "rate_burst", min: "1", step: "1", value: sub && sub.rate_limit && sub.rate_limit.burst ? String(sub.rate_limit.burst) : "", placeholder: "default: one second's worth" });
  const tls = sub && sub.tls;
  const clientCert = h("textarea", { name: "tls_client_certificate", rows: "3", placeholder: "-----BEGIN CERTIFICATE-----" }, tls && tls.client_certificate ? tls.client_certificate : "");
  const clientKey = h("textarea", { name: "tls_client_key", rows: "3", placeholder: tls && tls.client_key_set ? "stored (never shown); paste a key to replace it" : "-----BEGIN PRIVATE KEY-----" }, "");
  const ca = h("textarea", { name: "tls_ca", rows: "3", placeholder: "-----BEGIN CERTIFICATE----- (the receiver's private CA)" }, tls && tls.ca ? tls.ca : "");
  const form = h("form", { class: "card", id: "endpoint-form" },
    field("Destination", kind),
    field("URL", url),
    credentialsNote,
    perKind.nats, perKind.amqp, perKind.redis,
    events.element,
    field("Plugin", plugin),
    field("Plugin config (JSON)", config),
    field("Signature scheme", scheme),
    field("Retry preset", preset),
    h("fieldset", {}, h("legend", {}, "Window (optional)"), field("Every", every), field("Closes at", at), field("Time zone", tz)),
    h("fieldset", {}, h("legend", {}, "Ordering (optional)"),
      field("Ordering key", orderKey, "A JSON pointer into the event: deliveries whose events share its value go one at a time, in order."),
      field("When the head fails for good", onFailure, "skip: the next one goes; block: the key waits until the head is retried or dismissed.")),
    h("fieldset", {}, h("legend", {}, "Rate limit (optional)"), field("Per second", perSecond), field("Burst", burst)),
    h("fieldset", {}, h("legend", {}, "TLS (optional)"),
      field("Client certificate (PEM)", clientCert, "Presented for mutual TLS, with its key."),
      field("Client key (PEM)", clientKey, "Stored sealed; never shown again."),
      field("CA (PEM)", ca, "Trusted for this endpoint besides the system's CAs.")),
    field("Description", description),
    endpointFormActions(sub));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    form.querySelectorAll(".error").forEach((e) => e.remove());
    try {
      const input = {
        event_types: events.read(),
        description: description.value,
        retry: { preset: preset.value },
      };
      if (kind.value === "http") input.url = url.value.trim();
      else {
        input.destination = { type: kind.value, url: url.value.trim() };
        if (kind.value === "nats") input.destination.subject = subject.value.trim();
        if (kind.value === "amqp") Object.assign(input.destination, { exchange: exchange.value.trim(), routing_key: routingKey.value.trim() });
        if (kind.value === "redis") {
          input.destination.stream = stream.value.trim();
          if (maxLen.value.trim()) input.destination.max_len = Number(maxLen.value);
        }
      }
      if (!sub || sub.signature.scheme !== scheme.value) input.signature = { scheme: scheme.value };
      if (plugin.value) {
        let cfg;
        try { cfg = JSON.parse(config.value || "{}"); } catch (e) { throw new Error("Plugin config is not JSON: " + e.message); }
        input.plugin = { id: plugin.value, config: cfg };
      } else if (sub) input.plugin = null;
      if (every.value.trim()) {
        input.window = { every: every.value.trim() };
        if (at.value.trim()) input.window.at = at.value.trim();
        if (tz.value.trim()) input.window.timezone = tz.value.trim();
      } else if (sub) input.window = null;
      if (orderKey.value.trim()) input.ordering = { key: orderKey.value.trim(), on_failure: onFailure.value };
      else if (sub && sub.ordering) input.ordering = null;
      if (perSecond.value.trim()) {
        input.rate_limit = { per_second: Number(perSecond.value) };
        if (burst.value.trim()) input.rate_limit.burst = Number(burst.value);
      } else if (sub && sub.rate_limit) input.rate_limit = null;
      const certText = clientCert.value.trim(), keyText = clientKey.value.trim(), caText = ca.value.trim();
      const tlsChanged = !tls || certText !== (tls.client_certificate || "").trim() || keyText || caText !== (tls.ca || "").trim();
      if ((certText || caText) && tlsChanged) {
        input.tls = {};
        if (certText) { input.tls.client_certificate = certText; input.tls.client_key = keyText; }
        if (caText) input.tls.ca = caText;
      } else if (!certText && !caText && tls) input.tls = null;
      await saveEndpoint(sub, input);
    } catch (e) { showError(form, e); }
  });
  render(sub ? "Edit endpoint" : "Add endpoint", form);
  url.focus();
}

// Portal mode: what a customer sets of its endpoint (the API refuses the
// tenant's own settings through a portal link).
async function portalEndpointForm(id) {
  const sub = id ? await api("GET", "/v1/subscriptions/" + encodeURIComponent(id)) : null;
  const url = h("input", { type: "url", name: "url", required: true, value: sub ? sub.url : "", placeholder: "https://example.com/webhook" });
  const offered = portal.event_types.length === 0 ? null : h("ul", { id: "portal-event-types", class: "hint" },
    portal.event_types.map((t) => h("li", {}, h("code", {}, t.name), t.description ? " — " + t.description : "")));
  const events = eventsFieldset(sub, offered);
  const description = h("input", { type: "text", name: "description", value: sub && sub.description ? sub.description : "" });
  const perSecond = h("input", { type: "number", name: "rate_per_second", min: "0.01", step: "any", value: sub && sub.rate_limit ? String(sub.rate_limit.per_second) : "", placeholder: "attempts a second (empty: no limit)" });
  const form = h("form", { class: "card", id: "endpoint-form" },
    field("URL", url),
    events.element,
    field("Description", description),
    field("Rate limit (per second)", perSecond),
    endpointFormActions(sub));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    form.querySelectorAll(".error").forEach((e) => e.remove());
    try {
      const input = { event_types: events.read(), description: description.value };
      // Only a change: an endpoint with the tenant's plugin keeps its address.
      if (!sub || url.value.trim() !== sub.url) input.url = url.value.trim();
      if (perSecond.value.trim()) input.rate_limit = { per_second: Number(perSecond.value) };
      else if (sub && sub.rate_limit) input.rate_limit = null;
      await saveEndpoint(sub, input);
    } catch (e) { showError(form, e); }
  });
  render(sub ? "Edit endpoint" : "Add endpoint", form);
  url.focus();
}

// One line for where an endpoint's deliveries go.
function destinationText(d) {
  switch (d.type) {
    case "nats": return `NATS subject ${d.subject}`;
    case "amqp": return `RabbitMQ exchange ${d.exchange ? d.exchange : "(default)"}, routing key ${d.routing_key}`;
    case "redis": return `Redis stream ${d.stream} (about ${d.max_len} entries)`;
    default: return "HTTP POST";
  }
}

async function endpointPage(id, params) {
  const sub = await api("GET", "/v1/subscriptions/" + encodeURIComponent(id));
  const path = "/v1/subscriptions/" + encodeURIComponent(id);
  const secretBox = h("p", { id: "secret" });
  const since = h("input", { type: "datetime-local", name: "since" });
  const details = h("section", { class: "card" },
    h("dl", { class: "kv" },
      h("dt", {}, "URL"), h("dd", {}, sub.url),
      h("dt", {}, "Destination"), h("dd", { id: "endpoint-destination" }, destinationText(sub.destination)),
      h("dt", {}, "Description"), h("dd", {}, sub.description || "—"),
      h("dt", {}, "State"), h("dd", {}, statusBadge(sub.enabled ? "enabled" : "disabled"), " ", sub.disabled_reason || ""),
      h("dt", {}, "Events"), h("dd", {}, sub.event_types.join(", ")),
      h("dt", {}, "Plugin"), h("dd", {}, sub.plugin ? `${sub.plugin.id} ${JSON.stringify(sub.plugin.config)}` : "—"),
      h("dt", {}, "Signature"), h("dd", {}, sub.signature.scheme),
      h("dt", {}, "Retries"), h("dd", {}, `${sub.retry.preset || "custom"}: ${sub.retry.schedule_secs.length} retries`),
      h("dt", {}, "Window"), h("dd", {}, sub.window ? `every ${sub.window.every} at ${sub.window.at} ${sub.window.timezone}` : "—"),
      h("dt", {}, "Ordering"), h("dd", { id: "endpoint-ordering" }, sub.ordering ? `by ${sub.ordering.key}, on failure: ${sub.ordering.on_failure}` : "—"),
      h("dt", {}, "Rate limit"), h("dd", { id: "endpoint-rate" }, sub.rate_limit ? `${sub.rate_limit.per_second}/s` + (sub.rate_limit.burst ? `, burst ${sub.rate_limit.burst}` : "") : "—"),
      h("dt", {}, "TLS"), h("dd", {}, sub.tls ? [sub.tls.client_certificate ? "client certificate" : null, sub.tls.ca ? "own CA" : null].filter(Boolean).join(", ") : "—"),
      h("dt", {}, "Failure streak"), h("dd", {}, String(sub.consecutive_failures)),
      h("dt", {}, "Queued"), h("dd", {}, String(sub.queued_deliveries)),
      h("dt", {}, "Created"), h("dd", {}, when(sub.created_at))),
    secretBox,
    readOnly() ? null : h("div", { class: "actions" },
      h("a", { class: "button secondary", href: "#/endpoints/" + id + "/edit" }, "Edit"),
      sub.enabled
        ? action("Disable", async () => { const here = location.hash; await api("POST", path + "/disable"); refreshIfStill(here); }, "secondary")
        : action("Enable", async () => { const here = location.hash; await api("POST", path + "/enable"); refreshIfStill(here); }, "secondary"),
      action("Reveal secret", async () => {
        const s = await api("GET", path + "/secret");
        secretBox.replaceChildren("Signing secret: ", h("span", { class: "secret" }, s.secret));
      }, "secondary"),
      action("Rotate secret", async () => {
        if (!confirm("Rotate the signing secret? The old one keeps signing for the grace period.")) return;
        const s = await api("POST", path + "/rotate-secret");
        secretBox.replaceChildren("New signing secret: ", h("span", { class: "secret" }, s.secret));
      }, "secondary"),
      action("Send test event", async () => {
        const r = await api("POST", path + "/test");
        const d = r.deliveries[0];
        const last = d && d.attempts.length ? d.attempts[d.attempts.length - 1] : null;
        notice(main(), d ? `Test delivery ${d.id}: ${d.status}${last && last.status ? ", HTTP " + last.status : ""}${d.last_error ? " — " + d.last_error : ""}` : "The plugin sent nothing.");
        deliveries.refresh();
      }, "secondary"),
      action("Delete", async () => {
        if (!confirm("Delete this endpoint? Its pending deliveries fail.")) return;
        await api("DELETE", path);
        location.hash = "#/endpoints";
      }, "danger")),
    readOnly() ? null : h("form", { class: "filters", id: "replay-form" }, field("Replay events since", since),
      action("Replay", async () => {
        if (!since.value) throw new Error("Pick a time to replay from.");
        const r = await api("POST", path + "/replay", { since: new Date(since.value).toISOString() });
        notice(main(), `Replayed ${r.events} events into ${r.deliveries} deliveries.`);
        deliveries.refresh();
      }, "secondary")));
  const deliveries = deliveriesTable({ subscription_id: id }, params);
  render("Endpoint", details, h("h2", {}, "Recent deliveries"), deliveries.element);
  deliveries.refresh();
  pollTimer = setInterval(() => { deliveries.refresh(true); refreshBanner(); }, POLL_MS);
}

// ---------- deliveries ----------

// A live, filtered, paged table of deliveries; `fixed` are filters that
// always apply (the endpoint), `params` the ones from the address.
function deliveriesTable(fixed, params) {
  const status = h("select", { name: "status" }, ["", "pending", "blocked", "succeeded", "failed", "filtered", "held"].map((s) =>
    h("option", { value: s, selected: params.get("status") === s }, s || "any")));
  const type = h("input", { type: "text", name: "event_type", value: params.get("event_type") || "", placeholder: "message.created" });
  const body = h("tbody", {});
  const info = h("span", { class: "muted" });
  const cursors = [null];
  let page = 0;
  let next = null;
  const newer = h("button", { type: "button", class: "secondary", disabled: true }, "Newer");
  const older = h("button", { type: "button", class: "secondary", disabled: true }, "Older");
  const element = h("section", { id: "deliveries" },
    h("form", { class: "filters", role: "search" }, field("Status", status), field("Event type", type),
      h("button", { type: "submit" }, "Filter")),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Event type", "Status", "HTTP", "Attempts", "ms", "Created", "Error"].map((t) => h("th", { scope: "col" }, t)))),
      body)),
    h("div", { class: "pager" }, newer, older, info));
  const load = async (quiet) => {
    const q = new URLSearchParams({ limit: "25" });
    for (const [k, v] of Object.entries(fixed)) q.set(k, v);
    if (status.value) q.set("status", status.value);
    if (type.value.trim()) q.set("event_type", type.value.trim());
    if (cursors[page]) q.set("cursor", cursors[page]);
    let data;
    try { data = await api("GET", "/v1/deliveries?" + q); } catch (e) { if (!quiet) showError(element, e); return; }
    next = data.next_cursor;
    body.replaceChildren(...data.items.map((d) => rowLink("#/deliveries/" + d.id, [
      h("td", {}, link("#/deliveries/" + d.id, d.event_type)),
      h("td", {}, statusBadge(d.status)),
      h("td", {}, d.last_http_status ? String(d.last_http_status) : "—"),
      h("td", {}, String(d.attempts)),
      h("td", {}, d.last_duration_ms !== null && d.last_duration_ms !== undefined ? String(d.last_duration_ms) : "—"),
      h("td", {}, when(d.created_at)),
      h("td", {}, d.last_error || ""),
    ])));
    if (data.items.length === 0) body.replaceChildren(h("tr", {}, h("td", { colspan: "7", class: "muted" }, "No deliveries.")));
    newer.disabled = page === 0;
    older.disabled = !next;
    info.textContent = `Page ${page + 1}` + (page === 0 ? " · live" : "");
  };
  element.querySelector("form").addEventListener("submit", (ev) => { ev.preventDefault(); cursors.length = 1; page = 0; load(); });
  newer.addEventListener("click", () => { if (page > 0) { page--; load(); } });
  older.addEventListener("click", () => { if (next) { cursors[page + 1] = next; page++; load(); } });
  // Live: only the first page refreshes by itself, so paging stays put.
  return { element, refresh: (quiet) => (quiet && page !== 0 ? null : load(quiet)) };
}

async function deliveriesPage(params) {
  const table = deliveriesTable({}, params);
  render("Deliveries", table.element);
  await table.refresh();
  pollTimer = setInterval(() => { table.refresh(true); refreshBanner(); }, POLL_MS);
}

const SECRET_HEADER = /signature|authorization|secret|token|key/i;

async function deliveryPage(id) {
  const d = await api("GET", "/v1/deliveries/" + encodeURIComponent(id));
  const sections = [];
  sections.push(h("section", { class: "card" }, h("dl", { class: "kv" },
    h("dt", {}, "Delivery id"), h("dd", {}, d.id),
    h("dt", {}, "Event"), h("dd", {}, `${d.event_type} (${d.event_id})`),
    h("dt", {}, "Endpoint"), h("dd", {}, d.subscription_id.startsWith("ops_") ? "ops endpoint" : link("#/endpoints/" + d.subscription_id, d.subscription_id)),
    h("dt", {}, "Status"), h("dd", { id: "delivery-status" }, statusBadge(d.status)),
    h("dt", {}, "HTTP"), h("dd", {}, d.last_http_status ? String(d.last_http_status) : "—"),
    h("dt", {}, "Attempts"), h("dd", {}, String(d.attempts)),
    h("dt", {}, "Next attempt"), h("dd", {}, d.next_attempt_at ? when(d.next_attempt_at) : "—"),
    h("dt", {}, "Error"), h("dd", {}, d.last_error || "—"),
    d.line ? [h("dt", {}, "Ordering"), h("dd", { id: "delivery-line" },
      `key ${JSON.stringify(d.line.key)}: ` + (d.line.stopped ? "the line is stopped by its failed head " : d.line.ahead > 0 ? `${d.line.ahead} ahead, behind ` : "at the head "),
      d.line.head && d.line.head !== d.id ? link("#/deliveries/" + d.line.head, d.line.head) : "")] : null,
    h("dt", {}, "Created"), h("dd", {}, when(d.created_at))),
    readOnly() ? null : h("div", { class: "actions" },
      d.line && d.line.stopped && d.line.head === d.id ? action("Dismiss (let the line go on)", async () => {
        const here = location.hash;
        await api("POST", "/v1/deliveries/" + encodeURIComponent(id) + "/dismiss");
        notice(main(), "Dismissed: the next delivery with this key goes now.");
        refreshIfStill(here, 1500);
      }, "secondary") : null,
      action("Retry", async () => {
        const here = location.hash;
        await api("POST", "/v1/deliveries/" + encodeURIComponent(id) + "/retry");
        notice(main(), "Queued again under the same delivery id.");
        refreshIfStill(here, 1500);
      }),
      d.subscription_id.startsWith("ops_") ? null : h("a", { class: "button secondary", href: "#/endpoints/" + d.subscription_id }, "Replay from the endpoint"))));
  if (d.request) {
    const headers = d.signing_headers.map((x) => [x.name, x.value]);
    headers.push(["content-type", d.request.content_type]);
    headers.push(...d.request.headers.map((x) => [x.name, SECRET_HEADER.test(x.name) ? "••••••" : x.value]));
    sections.push(h("h2", {}, "Request"),
      h("p", { class: "hint" }, "Headers as the last attempt sent them. Signatures are masked, and so are headers that look like credentials."),
      h("div", { class: "table-wrap" }, h("table", { id: "request-headers" }, h("tbody", {}, headers.map(([n, v]) => h("tr", {}, h("th", { scope: "row" }, n), h("td", {}, v)))))),
      h("pre", { id: "request-body" }, pretty(d.request.body)));
  }
  sections.push(h("h2", {}, "Attempts"), d.attempt_log.length === 0 ? h("p", { class: "muted" }, "No attempts yet.") :
    h("div", { class: "table-wrap" }, h("table", { id: "attempts" },
      h("thead", {}, h("tr", {}, ["At", "HTTP", "ms", "Error", "Response"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, d.attempt_log.map((a) => h("tr", {},
        h("td", {}, when(a.at)), h("td", {}, a.status ? String(a.status) : "—"), h("td", {}, String(a.duration_ms)),
        h("td", {}, a.error || ""), h("td", {}, a.response_body ? h("pre", {}, a.response_body) : "")))))));
  render("Delivery", ...sections);
  if (d.status === "pending") pollTimer = setInterval(() => route(), POLL_MS);
}

// ---------- plugins ----------

async function pluginsPage() {
  const plugins = await api("GET", "/v1/plugins");
  const name = h("input", { type: "text", name: "name", required: true, placeholder: "my-plugin" });
  const version = h("input", { type: "text", name: "version", placeholder: "1" });
  const file = h("input", { type: "file", name: "wasm", accept: ".wasm,application/wasm", required: true });
  const upload = h("form", { class: "card", id: "upload-form" }, h("h2", {}, "Upload a plugin"),
    field("Name", name), field("Version", version), field("Component (.wasm)", file),
    h("button", { type: "submit" }, "Upload"));
  upload.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      if (!file.files[0]) throw new Error("Choose a .wasm file.");
      const here = location.hash;
      const q = new URLSearchParams({ name: name.value.trim() });
      if (version.value.trim()) q.set("version", version.value.trim());
      await api("POST", "/v1/plugins?" + q, undefined, { raw: await file.files[0].arrayBuffer() });
      refreshIfStill(here);
    } catch (e) { showError(upload, e); }
  });
  const which = h("select", { name: "plugin" }, plugins.map((p) => h("option", { value: p.id }, p.builtin ? `${p.name} (bundled)` : `${p.name} ${p.version}`)));
  const sample = { type: "message.created", source: "dashboard", data: { conversation_id: "c-1", author: "visitor", content: "Hello" } };
  const event = h("textarea", { name: "event", rows: "10" }, JSON.stringify(sample, null, 2));
  const config = h("textarea", { name: "config", rows: "3" }, "{}");
  const recent = h("select", { name: "recent" }, h("option", { value: "" }, "— pick a recent event —"));
  try {
    const page = await api("GET", "/v1/deliveries?limit=25");
    const seen = new Set();
    for (const d of page.items) {
      if (seen.has(d.event_id) || d.subscription_id.startsWith("ops_")) continue;
      seen.add(d.event_id);
      recent.append(h("option", { value: d.event_id }, `${d.event_type} · ${when(d.created_at)}`));
    }
  } catch (_) { /* no recent events to offer */ }
  recent.addEventListener("change", async () => {
    if (!recent.value) return;
    try {
      const e = await api("GET", "/v1/events/" + encodeURIComponent(recent.value));
      event.value = JSON.stringify({ id: e.id, type: e.type, occurred_at: e.occurred_at, source: e.source, data: e.data }, null, 2);
    } catch (e) { showError(dry, e); }
  });
  const result = h("div", { id: "dry-run-result" });
  const dry = h("form", { class: "card", id: "dry-run-form" }, h("h2", {}, "Dry run"),
    field("Plugin", which), field("Use a recent event", recent), field("Event (JSON)", event), field("Config (JSON)", config),
    h("button", { type: "submit" }, "Run"), result);
  dry.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    result.replaceChildren();
    try {
      let e, c;
      try { e = JSON.parse(event.value); } catch (x) { throw new Error("Event is not JSON: " + x.message); }
      try { c = JSON.parse(config.value || "{}"); } catch (x) { throw new Error("Config is not JSON: " + x.message); }
      const r = await api("POST", "/v1/plugins/" + encodeURIComponent(which.value) + "/dry-run", { event: e, config: c });
      result.append(
        h("p", {}, r.error ? h("span", { class: "error" }, r.error) : "Action:", ` (${(r.elapsed_us / 1000).toFixed(2)} ms)`),
        r.action ? h("pre", {}, JSON.stringify(r.action, null, 2)) : null,
        h("h3", {}, "Log"), r.log.length ? h("pre", {}, r.log.map((l) => `${l.level}: ${l.message}`).join("\n")) : h("p", { class: "muted" }, "Nothing logged."));
    } catch (x) { showError(dry, x); }
  });
  render("Plugins",
    h("div", { class: "table-wrap" }, h("table", { id: "plugins" },
      h("thead", {}, h("tr", {}, ["Name", "Version", "Id", "Size", "Added", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, plugins.map((p) => h("tr", {},
        h("td", {}, p.name, p.description ? h("div", { class: "muted" }, p.description) : null),
        h("td", {}, p.version), h("td", {}, p.id), h("td", {}, `${Math.round(p.size / 1024)} KiB`),
        h("td", {}, p.builtin ? "bundled" : when(p.created_at)),
        h("td", {}, p.builtin ? null : action("Delete", async () => {
          if (!confirm(`Delete plugin ${p.name}?`)) return;
          const here = location.hash;
          await api("DELETE", "/v1/plugins/" + encodeURIComponent(p.id));
          refreshIfStill(here);
        }, "danger"))))))),
    upload, dry);
}

// ---------- windows ----------

async function windowsPage() {
  const subs = (await api("GET", "/v1/subscriptions")).filter((s) => s.window);
  const cards = [];
  for (const s of subs) {
    const path = "/v1/subscriptions/" + encodeURIComponent(s.id);
    const view = await api("GET", path + "/window");
    cards.push(h("section", { class: "card" },
      h("h2", {}, link("#/endpoints/" + s.id, s.url)),
      h("p", { class: "muted" }, `every ${s.window.every}, closes at ${s.window.at} ${s.window.timezone}`),
      view.windows.length === 0 ? h("p", {}, "Nothing held.") :
        h("div", { class: "table-wrap" }, h("table", {},
          h("thead", {}, h("tr", {}, ["Window", "Closes", "Items", "Groups", "Last error"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, view.windows.map((w) => h("tr", {},
            h("td", {}, `${when(w.start)} – ${when(w.end)}`), h("td", {}, when(w.close_at)), h("td", {}, String(w.items)),
            h("td", {}, Object.entries(w.groups).map(([g, n]) => h("div", {}, `${g}: ${n}`))),
            h("td", {}, w.last_error || "")))))),
      action("Flush now", async () => {
        const here = location.hash;
        const r = await api("POST", path + "/flush");
        notice(main(), `Flushed ${r.windows.length} window(s).`);
        refreshIfStill(here, 1000);
      })));
  }
  render("Windows", subs.length ? cards : h("p", { class: "muted" }, "No endpoint collects a window."));
}

// ---------- sources ----------

// What comes in: each source's kind, where the platform posts (or what it
// polls or consumes), its dead letters, and a poll source's progress.
async function sourcesPage() {
  const sources = await api("GET", "/v1/sources");
  const whereFrom = (s) => s.poll ? "polls " + s.poll.url : s.nats ? `NATS ${s.nats.subject}` : s.url;
  const progress = (s) => {
    const p = s.poll_state;
    if (!s.poll) return "—";
    if (!p || !p.last_run_at) return "not polled yet";
    return h("div", {},
      h("div", {}, "last run " + when(p.last_run_at) + (p.last_ok_at ? ", last success " + when(p.last_ok_at) : "")),
      h("div", { class: "muted" }, "cursor " + (p.cursor || "none") + ", " + p.accepted + " events"),
      p.last_error ? h("div", { class: "error" }, `failing (${p.failures}×): ${p.last_error}`) : null);
  };
  const rows = sources.map((s) => h("tr", { "data-source": s.id },
    h("td", {}, s.kind, s.description ? h("div", { class: "muted" }, s.description) : null),
    h("td", {}, whereFrom(s)),
    h("td", {}, s.verify.scheme),
    h("td", {}, String(s.dead_letters)),
    h("td", { class: "poll-state" }, progress(s))));
  render("Sources",
    h("p", { class: "muted" }, "Platforms' webhooks in (POST to the URL), NATS subjects consumed, APIs polled. Create them with the API (docs/platforms.md)."),
    sources.length === 0 ? h("p", { class: "muted" }, "No sources yet.") :
      h("div", { class: "table-wrap" }, h("table", { id: "sources" },
        h("thead", {}, h("tr", {}, ["Kind", "From", "Verified by", "Dead letters", "Polling"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows))));
  if (sources.some((s) => s.poll)) refreshIfStill(location.hash, POLL_MS);
}

// ---------- applications ----------

// The tenant's own customers: each with its endpoints, which get only the
// events sent to it.
async function appsPage() {
  const list = await api("GET", "/v1/apps");
  const links = (await api("GET", "/v1/portal-links")).items;
  // An application's live portal links, each revocable.
  const linksOf = (a) => {
    const mine = links.filter((l) => l.app_id === a.id);
    if (mine.length === 0) return "";
    return h("details", { class: "portal-links" }, h("summary", {}, `${mine.length} portal link(s)`),
      h("ul", {}, mine.map((l) => h("li", { "data-link": l.id },
        `until ${when(l.expires_at)}${l.read_only ? ", read-only" : ""} `,
        action("Revoke", async () => {
          const here = location.hash;
          await api("DELETE", "/v1/apps/" + encodeURIComponent(a.id) + "/portal-links/" + encodeURIComponent(l.id));
          refreshIfStill(here);
        }, "danger")))));
  };
  const name = h("input", { name: "app_name", required: true, maxlength: 100, placeholder: "Clinique Dupont" });
  const uid = h("input", { name: "app_uid", maxlength: 100, placeholder: "your id for it (optional)" });
  const form = h("form", { class: "card", id: "app-form" },
    field("Name", name), field("Uid", uid, "Letters, digits, - _ . — usable wherever the id is."),
    h("button", { type: "submit" }, "Add application"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const body = { name: name.value.trim() };
      if (uid.value.trim()) body.uid = uid.value.trim();
      await api("POST", "/v1/apps", body);
      await appsPage();
    } catch (e) { showError(form, e); }
  });
  render("Applications",
    h("p", { class: "muted" }, "Your customers. An endpoint created for an application gets only the events sent to it (POST /v1/apps/{app}/events, or \"app\" in the event)."),
    list.items.length === 0 ? h("p", { class: "muted" }, "No applications yet.") :
      h("div", { class: "table-wrap" }, h("table", { id: "apps" },
        h("thead", {}, h("tr", {}, ["Name", "Uid", "Id", "Endpoints", "Added", "Portal", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, list.items.map((a) => h("tr", { "data-app": a.id },
          h("td", {}, a.name), h("td", {}, a.uid || ""), h("td", {}, a.id), h("td", {}, String(a.subscriptions)),
          h("td", {}, when(a.created_at)), h("td", {}, linksOf(a)),
          h("td", {}, action("Portal link", async () => {
            // A day-long link for this customer; shown once (only its hash is stored).
            const l = await api("POST", "/v1/apps/" + encodeURIComponent(a.id) + "/portal-links", { expires_in: 86400 });
            const out = h("input", { type: "text", readonly: true, class: "portal-url", value: l.url, "aria-label": "Portal link" });
            const here = location.hash;
            await appsPage();
            if (location.hash !== here) return;
            notice(main(), "");
            main().querySelector(".notice").replaceChildren(`Portal link for ${a.name}, valid until ${when(l.expires_at)}; shown this once: `, out);
            out.select();
          }, "secondary"), " ", action("Delete", async () => {
            if (!confirm(`Delete application ${a.name} and its ${a.subscriptions} endpoint(s)?`)) return;
            const here = location.hash;
            await api("DELETE", "/v1/apps/" + encodeURIComponent(a.id));
            refreshIfStill(here);
          }, "danger"))))))),
    form);
}

// ---------- event-type catalog ----------

async function catalogPage(params) {
  const archived = params.get("archived") === "1";
  const list = await api("GET", "/v1/event-types" + (archived ? "?include_archived=true" : ""));
  const name = h("input", { name: "type_name", required: true, placeholder: "message.created" });
  const description = h("input", { name: "type_description", maxlength: 1000 });
  const schema = h("textarea", { name: "type_schema", rows: 6, placeholder: '{"type": "object", "required": ["conversation_id"]}' });
  const example = h("textarea", { name: "type_example", rows: 4, placeholder: '{"conversation_id": 7}' });
  const validate = h("input", { type: "checkbox", name: "type_validate" });
  const form = h("form", { class: "card", id: "type-form" },
    field("Type", name), field("Description", description),
    field("JSON Schema of data", schema, "Optional. No $ref outside the schema is followed."),
    field("Example data", example, "Optional; checked against the schema."),
    h("label", {}, validate, " Refuse events whose data does not match the schema"),
    h("button", { type: "submit" }, "Add event type"));
  const json = (box, what) => {
    if (!box.value.trim()) return undefined;
    try { return JSON.parse(box.value); } catch (x) { throw new Error(what + " is not JSON: " + x.message); }
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const body = { name: name.value.trim(), description: description.value, validate: validate.checked };
      const s = json(schema, "The schema"), e = json(example, "The example");
      if (s !== undefined) body.schema = s;
      if (e !== undefined) body.example = e;
      await api("POST", "/v1/event-types", body);
      await catalogPage(params);
    } catch (x) { showError(form, x); }
  });
  const details = (what, v) => v === undefined || v === null ? "" :
    h("details", {}, h("summary", {}, what), h("pre", {}, JSON.stringify(v, null, 2)));
  render("Event types",
    h("p", { class: "muted" }, "The types you send. Once the catalog has one, endpoints subscribe to types of it.",
      " ", link(archived ? "#/catalog" : "#/catalog?archived=1", archived ? "Hide archived" : "Show archived")),
    list.items.length === 0 ? h("p", { class: "muted" }, "No event types yet.") :
      h("div", { class: "table-wrap" }, h("table", { id: "event-types" },
        h("thead", {}, h("tr", {}, ["Type", "Description", "Schema", "Example", "Checked", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, list.items.map((t) => h("tr", { "data-type": t.name },
          h("td", {}, t.name, t.archived ? h("div", { class: "muted" }, "archived") : null), h("td", {}, t.description),
          h("td", {}, details("schema", t.schema)), h("td", {}, details("example", t.example)),
          h("td", {}, t.validate ? "yes" : "no"),
          h("td", {},
            action(t.archived ? "Restore" : "Archive", async () => {
              const here = location.hash;
              await api("PATCH", "/v1/event-types/" + encodeURIComponent(t.name), { archived: !t.archived });
              refreshIfStill(here);
            }, "secondary"),
            action("Delete", async () => {
              if (!confirm(`Delete ${t.name} from the catalog?`)) return;
              const here = location.hash;
              await api("DELETE", "/v1/event-types/" + encodeURIComponent(t.name));
              refreshIfStill(here);
            }, "danger"))))))),
    form);
}

// ---------- ops alerts ----------

async function opsPage() {
  let current = null;
  try { current = await api("GET", "/v1/ops-endpoint"); } catch (e) { if (!(e instanceof ApiError) || e.status !== 404) throw e; }
  const url = h("input", { type: "url", name: "ops_url", required: true, value: current ? current.url : "", placeholder: "https://example.com/wasmhook-alerts" });
  const secretBox = h("p", {});
  const form = h("form", { class: "card", id: "ops-form" },
    h("p", {}, "When one of your endpoints is disabled (it answered 410, or too many deliveries in a row failed) or enabled again, wasmhook POSTs a signed subscription.disabled / subscription.enabled event here."),
    field("Alert URL", url), h("button", { type: "submit" }, current ? "Save" : "Set"), secretBox,
    current ? h("div", { class: "actions" },
      action("Reveal secret", async () => {
        const s = await api("GET", "/v1/ops-endpoint/secret");
        secretBox.replaceChildren("Signing secret: ", h("span", { class: "secret" }, s.secret));
      }, "secondary"),
      action("Remove", async () => { const here = location.hash; await api("DELETE", "/v1/ops-endpoint"); refreshIfStill(here); }, "danger")) : null);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("PUT", "/v1/ops-endpoint", { url: url.value.trim() });
      await opsPage();
      notice(main(), "Saved. Signing secret (Standard Webhooks): " + r.secret);
    } catch (e) { showError(form, e); }
  });
  render("Alerts", form);
}

// ---------- operator ----------

async function tenantsPage() {
  const tenants = await api("GET", "/v1/tenants");
  const name = h("input", { type: "text", name: "tenant_name", required: true });
  const created = h("div", { id: "new-tenant" });
  const form = h("form", { class: "card", id: "tenant-form" }, h("h2", {}, "Create a tenant"), field("Name", name),
    h("button", { type: "submit" }, "Create"), created);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const t = await api("POST", "/v1/tenants", { name: name.value });
      await tenantsPage();
      notice(main(), "");
      main().querySelector(".notice").replaceChildren(`Tenant ${t.name} (${t.id}) created. Its API key, shown this once: `, h("span", { class: "secret", id: "new-key" }, t.api_key));
    } catch (e) { showError(form, e); }
  });
  render("Tenants",
    h("div", { class: "table-wrap" }, h("table", { id: "tenants" },
      h("thead", {}, h("tr", {}, ["Name", "Id", "Endpoints", "Plugins", "Keys", "Pending", "Created"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, tenants.map((t) => h("tr", {},
        h("td", {}, t.name), h("td", {}, t.id), h("td", {}, String(t.subscriptions)), h("td", {}, String(t.plugins)),
        h("td", {}, String(t.api_keys)), h("td", {}, String(t.pending_deliveries)), h("td", {}, when(t.created_at))))))),
    form);
}

window.addEventListener("hashchange", () => route());
document.addEventListener("DOMContentLoaded", () => route());
