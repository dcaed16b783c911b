// The admin console (contract §10): plain JS over the public API, nothing loaded from elsewhere.
// Data is always put in the page with textContent, never as HTML.
"use strict";

(() => {
  const TYPES = [
    "entries", "codes", "scoring", "codeAssignments", "artistOptIn", "artistSmsOptIn",
    "livenationOptIn", "verifiedEntries", "codeWaves", "fanlist", "waitlist", "reminderEmail",
    "reminderEmailSample", "autoReminderEmail", "promoterEmailOptIn",
  ];
  const TOKEN_KEY = "exportService.token";
  const CAMPAIGN_KEY = "exportService.campaign";
  const RECENT_KEY = "exportService.recentCampaigns";
  const PAGE_SIZE = 20;
  const POLL_MS = 1500; // live updates within 2 s
  const ACTIVE = new Set(["PENDING", "TRIGGERED"]);

  const state = { token: null, claims: null, campaign: null, offset: 0, timer: null, shown: "" };
  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---- token -----------------------------------------------------------------------------

  function decodeClaims(token) {
    // Only to offer campaigns and warn of expiry: the service checks the signature.
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
      const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === "object" ? claims : null;
    } catch (_) {
      return null;
    }
  }

  function expired(claims) {
    return claims && typeof claims.exp === "number" && claims.exp * 1000 <= Date.now();
  }

  function utc(seconds) {
    return new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function setToken(token) {
    state.token = token || null;
    state.claims = token ? decodeClaims(token) : null;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    const status = $("token-status");
    if (!token) {
      status.textContent = "No token yet.";
    } else if (!state.claims) {
      status.textContent = "This does not look like a JWT; the service will say whether it accepts it.";
    } else if (expired(state.claims)) {
      status.textContent = `Token expired at ${utc(state.claims.exp)}.`;
      showError(`Your token expired at ${utc(state.claims.exp)}. Paste a new token to go on.`);
    } else {
      const campaigns = Object.keys(state.claims.permissions || {});
      const until = typeof state.claims.exp === "number" ? `, valid until ${utc(state.claims.exp)}` : "";
      status.textContent = `Token of ${state.claims.sub || "?"}${until}; campaigns: ${campaigns.join(", ") || "none"}.`;
    }
    offerCampaigns();
  }

  // ---- messages --------------------------------------------------------------------------

  function show(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = `message ${kind}`;
    box.hidden = false;
  }
  const showError = (text) => show(text, "error");
  const showInfo = (text) => show(text, "info");
  function clearMessage() {
    $("message").hidden = true;
  }

  function describe(status, body) {
    const message = body && body.error && body.error.message ? body.error.message : "";
    const code = body && body.error && body.error.payload ? body.error.payload.code : "";
    switch (status) {
      case 401:
        return /expired/i.test(message)
          ? "Your token has expired. Paste a new token to go on."
          : `The service refused the token (${message || "invalid"}). Paste a valid token.`;
      case 403:
        return `This token may not report on campaign ${state.campaign}: it has no REPORT permission there.`;
      case 404:
        return `Not found: ${message || "no such export in this campaign"}.`;
      case 409:
        return code === "ExportFinished"
          ? "That export has already ended, so it cannot be cancelled."
          : `Conflict: ${message}`;
      case 503:
        return "The service cannot reach its database or storage right now; try again in a moment.";
      default:
        return message ? `The service answered ${status}: ${message}` : `The service answered ${status}.`;
    }
  }

  // ---- API ---------------------------------------------------------------------------------

  async function api(method, path, body) {
    if (!state.token) throw new ApiError(0, "Paste a token first (step 1).");
    if (expired(state.claims)) {
      throw new ApiError(401, `Your token expired at ${utc(state.claims.exp)}. Paste a new token to go on.`);
    }
    const headers = { Authorization: `Bearer ${state.token}`, Accept: "application/json" };
    const init = { method, headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, "Cannot reach the service. Is it running? Retrying…");
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (_) {
      data = null;
    }
    if (!resp.ok) throw new ApiError(resp.status, describe(resp.status, data));
    return { status: resp.status, data };
  }

  const campaignPath = () => `/campaigns/${encodeURIComponent(state.campaign)}/exports`;

  // ---- campaigns -------------------------------------------------------------------------

  function recent() {
    try {
      const list = JSON.parse(sessionStorage.getItem(RECENT_KEY) || "[]");
      return Array.isArray(list) ? list.filter((c) => typeof c === "string") : [];
    } catch (_) {
      return [];
    }
  }

  function offerCampaigns() {
    const fromToken = Object.keys((state.claims && state.claims.permissions) || {});
    const options = [...new Set([...recent(), ...fromToken])];
    const list = $("campaign-options");
    list.replaceChildren(
      ...options.map((c) => {
        const option = document.createElement("option");
        option.value = c;
        return option;
      }),
    );
    if (!$("campaign").value && options.length === 1) $("campaign").value = options[0];
  }

  function openCampaign(campaign) {
    state.campaign = campaign;
    state.offset = 0;
    state.shown = "";
    sessionStorage.setItem(CAMPAIGN_KEY, campaign);
    const list = [campaign, ...recent().filter((c) => c !== campaign)].slice(0, 10);
    sessionStorage.setItem(RECENT_KEY, JSON.stringify(list));
    offerCampaigns();
    $("exports-campaign").textContent = `of ${campaign}`;
    $("exports-body").replaceChildren();
    refresh();
  }

  // ---- the exports table -----------------------------------------------------------------

  function humanBytes(n) {
    if (n == null) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
  }

  function humanSeconds(s) {
    if (s == null) return null;
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  }

  function cell(label, ...children) {
    const td = document.createElement("td");
    td.dataset.label = label;
    td.append(...children);
    return td;
  }

  function progressCell(exp) {
    const p = exp.progress || {};
    const bar = document.createElement("progress");
    const text = document.createElement("span");
    const total = exp.status === "FINISHED" ? exp.count ?? p.total : p.total;
    const done = exp.status === "FINISHED" ? exp.count ?? p.processed : p.processed || 0;
    bar.setAttribute("aria-label", `progress of export ${exp.id}`);
    if (total != null && total > 0) {
      bar.max = total;
      bar.value = Math.min(done, total);
      text.textContent = ` ${Math.floor((100 * Math.min(done, total)) / total)}%`;
    } else if (exp.status === "FINISHED") {
      bar.max = 1;
      bar.value = 1;
      text.textContent = " 100%";
    } else if (exp.status === "TRIGGERED") {
      text.textContent = ` ${done.toLocaleString("en-US")} rows`; // no total: indeterminate
    } else {
      bar.max = 1;
      bar.value = 0;
    }
    return cell("Progress", bar, text);
  }

  function queueText(exp) {
    if (exp.status === "PENDING" && exp.queue) {
      const { position, etaSeconds } = exp.queue;
      if (etaSeconds != null && etaSeconds < 1) return `#${position ?? "?"}, starts next`;
      const eta = humanSeconds(etaSeconds);
      return `#${position ?? "?"}${eta ? `, starts in ~${eta}` : ""}`;
    }
    if (exp.status === "TRIGGERED") {
      if (exp.cancelRequested) return "cancelling…";
      const left = humanSeconds(exp.progress && exp.progress.etaSeconds);
      return left ? `running, ~${left} left` : "running";
    }
    return "";
  }

  function filesCell(exp) {
    const links = (exp.files || []).map((f, i) => {
      const name = f.key.split("/").pop();
      if (!f.url) {
        const span = document.createElement("span");
        span.textContent = `${name} (no link)`;
        return span;
      }
      const a = document.createElement("a");
      a.href = f.url;
      a.rel = "noopener noreferrer";
      a.className = "download";
      a.dataset.sha256 = f.sha256;
      a.textContent = `${name} (${humanBytes(f.bytes)})`;
      a.setAttribute("aria-label", `download file ${i + 1} of export ${exp.id}: ${name}`);
      return a;
    });
    const td = cell("Files", ...links);
    td.className = "files";
    return td;
  }

  function actionsCell(exp) {
    if (!ACTIVE.has(exp.status)) return cell("Actions");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "danger cancel";
    button.dataset.exportId = exp.id;
    button.textContent = exp.cancelRequested ? "Cancelling…" : "Cancel";
    button.disabled = Boolean(exp.cancelRequested);
    button.setAttribute("aria-label", `Cancel ${exp.exportType} export ${exp.id}`);
    button.addEventListener("click", () => cancel(exp, button));
    return cell("Actions", button);
  }

  function row(exp) {
    const tr = document.createElement("tr");
    tr.dataset.exportId = exp.id;
    tr.dataset.status = exp.status;
    const status = document.createElement("span");
    status.className = `status status-${exp.status}`;
    status.textContent = exp.status;
    const created = ((exp.date && exp.date.created) || "").replace("T", " ").replace(/\.\d+Z$/, "");
    const error = exp.error ? `${exp.error.code}: ${exp.error.message}` : "";
    const size = (exp.files || []).reduce((sum, f) => sum + f.bytes, 0);
    const type = exp.dateKey ? `${exp.exportType} (${exp.dateKey})` : exp.exportType;
    const rows = exp.count != null ? exp.count.toLocaleString("en-US") : "";
    const cells = [
      cell("Type", type + (exp.includeAllMarkets ? ", all markets" : "")),
      cell("Status", status),
      cell("Requester", exp.requesterUserId || ""),
      cell("Created", created),
      progressCell(exp),
      cell("Rows", rows),
      cell("Size", exp.files && exp.files.length ? humanBytes(size) : ""),
      cell("Queue", queueText(exp)),
      cell("Error", error),
      filesCell(exp),
      actionsCell(exp),
    ];
    cells[5].className = "num";
    cells[6].className = "num";
    cells[7].classList.add("queue");
    tr.append(...cells);
    return tr;
  }

  function render(exports, hasMore) {
    // Unchanged rows are kept as they are, so keyboard focus on a button survives the polls.
    const body = $("exports-body");
    const existing = new Map([...body.children].map((tr) => [tr.dataset.exportId, tr]));
    const rows = exports.map((exp) => {
      const key = JSON.stringify(exp, (k, v) => (k === "url" ? undefined : v));
      const old = existing.get(exp.id);
      if (old && old.dataset.key === key) return old;
      const tr = row(exp);
      tr.dataset.key = key;
      return tr;
    });
    const same = rows.length === body.children.length && rows.every((tr, i) => body.children[i] === tr);
    if (!same) body.replaceChildren(...rows);
    $("empty").hidden = exports.length > 0;
    $("empty").textContent = state.offset > 0 ? "No older exports." : "No exports yet for this campaign.";
    $("page-prev").disabled = state.offset === 0;
    $("page-next").disabled = !hasMore;
    $("page-label").textContent = `Page ${state.offset / PAGE_SIZE + 1}`;
    $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  async function refresh() {
    clearTimeout(state.timer);
    if (!state.campaign || !state.token) return;
    const campaign = state.campaign;
    try {
      const { data } = await api("GET", `${campaignPath()}?limit=${PAGE_SIZE + 1}&offset=${state.offset}`);
      if (campaign !== state.campaign) return;
      render(data.exports.slice(0, PAGE_SIZE), data.exports.length > PAGE_SIZE);
      if ($("message").dataset.source === "poll") {
        clearMessage();
        $("message").dataset.source = "";
      }
    } catch (err) {
      showError(err.message);
      $("message").dataset.source = "poll";
      if (err.status === 401 || err.status === 403) return; // polling again cannot help
    }
    state.timer = setTimeout(refresh, POLL_MS);
  }

  // ---- actions ---------------------------------------------------------------------------

  async function cancel(exp, button) {
    button.disabled = true;
    try {
      const { status } = await api("POST", `${campaignPath()}/${encodeURIComponent(exp.id)}/cancel`);
      showInfo(
        status === 202
          ? `Cancel requested: the running ${exp.exportType} export stops within seconds.`
          : `The ${exp.exportType} export was cancelled.`,
      );
    } catch (err) {
      showError(err.message);
      button.disabled = false;
    }
    refresh();
  }

  function isoUtc(local) {
    // datetime-local has no zone: the labels say UTC, so read it as UTC.
    if (!local) return null;
    const withSeconds = local.length === 16 ? `${local}:00` : local;
    return `${withSeconds}Z`;
  }

  function requestBody() {
    const exportType = $("export-type").value;
    const body = { exportType };
    const dateKey = $("date-key").value.trim();
    if (exportType === "codeWaves") {
      if (!/^\d{8}$/.test(dateKey)) throw new ApiError(0, "codeWaves needs a wave date as 8 digits, YYYYMMDD.");
      body.dateKey = dateKey;
    }
    if ($("include-all-markets").checked) body.includeAllMarkets = true;
    // Filters (contract §12) go in the body only when given.
    const filters = {};
    const markets = $("filter-markets").value.split(",").map((m) => m.trim()).filter(Boolean);
    if (markets.length) filters.marketIds = markets;
    const from = isoUtc($("filter-from").value);
    const to = isoUtc($("filter-to").value);
    if (from) filters.createdFrom = from;
    if (to) filters.createdTo = to;
    if (Object.keys(filters).length) body.filters = filters;
    return body;
  }

  async function submitRequest(event) {
    event.preventDefault();
    if (!state.campaign) {
      showError("Pick a campaign first (step 2).");
      $("campaign").focus();
      return;
    }
    const button = $("request-submit");
    button.disabled = true;
    try {
      const { status, data } = await api("POST", campaignPath(), requestBody());
      const where = data.queue && data.queue.position ? `, queue position ${data.queue.position}` : "";
      showInfo(
        status === 202
          ? `Requested a ${data.exportType} export (${data.id})${where}.`
          : `An identical ${data.exportType} export is already ${data.status}: it is shown below.`,
      );
      state.offset = 0;
      refresh();
    } catch (err) {
      showError(err.message);
    } finally {
      button.disabled = false;
    }
  }

  function syncDateKey() {
    const waves = $("export-type").value === "codeWaves";
    $("date-key-field").hidden = !waves;
    $("date-key").required = waves;
  }

  // ---- wiring ------------------------------------------------------------------------------

  function init() {
    const select = $("export-type");
    select.replaceChildren(
      ...TYPES.map((t) => {
        const option = document.createElement("option");
        option.value = t;
        option.textContent = t;
        return option;
      }),
    );
    select.addEventListener("change", syncDateKey);
    syncDateKey();
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      clearMessage();
      setToken($("token").value.trim());
      $("token").value = "";
      if (state.campaign) refresh();
    });
    $("token-forget").addEventListener("click", () => {
      setToken(null);
      clearTimeout(state.timer);
      $("exports-body").replaceChildren();
      showInfo("Token forgotten in this tab.");
    });
    $("campaign-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const campaign = $("campaign").value.trim();
      if (!campaign) {
        showError("Type a campaign id.");
        return;
      }
      clearMessage();
      openCampaign(campaign);
    });
    $("request-form").addEventListener("submit", submitRequest);
    $("page-prev").addEventListener("click", () => {
      state.offset = Math.max(0, state.offset - PAGE_SIZE);
      refresh();
    });
    $("page-next").addEventListener("click", () => {
      state.offset += PAGE_SIZE;
      refresh();
    });
    setToken(sessionStorage.getItem(TOKEN_KEY));
    const campaign = sessionStorage.getItem(CAMPAIGN_KEY);
    if (campaign) {
      $("campaign").value = campaign;
      openCampaign(campaign);
    } else {
      $("page-prev").disabled = true;
      $("page-next").disabled = true;
    }
  }

  document.addEventListener("DOMContentLoaded", init);
})();
