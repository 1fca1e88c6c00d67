// steerc playground: register a context, ask questions with a steering method and with "none",
// and see where each question looked. Only the public API is used: /openapi.json (the methods and
// their options), /v1/models, /v1/contexts and streamed /v1/chat/completions.
// Rules: every piece of text from the user or the server goes in with textContent (never as
// HTML); the API key lives only in the variable below (tab memory, never stored); no inline script.
"use strict";

(() => {
  let apiKey = null; // the API key, in this tab's memory only

  const SHARED_OPTIONS = ["alpha"]; // the one shared setting shown beside each method's own (its strength)
  const PAGE = 20; // contexts per page of the listing

  const state = {
    schema: null, // /openapi.json
    steer: null, // the steer object's schema (its properties)
    model: null, // /v1/models data[0]
    context: null, // {id, text (null when only its preview is known), record}
    texts: new Map(), // context id -> its text (the contexts registered from this tab)
    history: new Map(), // context id -> [entries], oldest first
    shown: null, // the history entry shown now
    after: null, // the listing's next page
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  };
  const pct = (x) => `${(100 * x).toFixed(1)}%`;

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // -- status line ------------------------------------------------------------------------------
  function say(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.className = kind || "";
  }

  // -- HTTP -------------------------------------------------------------------------------------
  function headers(json) {
    const h = {};
    if (apiKey) h.Authorization = `Bearer ${apiKey}`;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function failure(response) {
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      // not JSON: the status line says what happened
    }
    const message = data && data.error && data.error.message ? data.error.message : `${response.status} ${response.statusText}`;
    if (response.status === 401) $("key-form").hidden = false;
    return new ApiError(response.status, message);
  }

  async function api(path, method = "GET", body = undefined) {
    const response = await fetch(path, {method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body)});
    if (!response.ok) throw await failure(response);
    return response.json();
  }

  // -- the schema: methods and their main options ----------------------------------------------
  function resolve(node) {
    while (node && node.$ref) {
      node = node.$ref.slice(2).split("/").reduce((at, part) => at[part], state.schema);
    }
    return node;
  }

  function steerSchema() {
    const body = state.schema.paths["/v1/chat/completions"].post.requestBody.content["application/json"].schema;
    const steer = resolve(resolve(body).properties.steer);
    const alternatives = steer.anyOf ? steer.anyOf.map(resolve) : [steer];
    return alternatives.find((s) => s && s.properties).properties;
  }

  function scalar(prop) {
    // {kind: "choice" | "integer" | "number", ...limits}, or null for a list or object option
    const alts = (prop.anyOf || [prop]).filter((a) => a.type !== "null");
    if (alts.length === 1 && alts[0].enum) return {kind: "choice", choices: alts[0].enum};
    if (alts.length && alts.every((a) => a.type === "integer")) return {kind: "integer", ...alts[0]};
    if (alts.length && alts.every((a) => a.type === "integer" || a.type === "number")) return {kind: "number", ...alts.find((a) => a.type === "number")};
    return null;
  }

  function buildMethodPicker() {
    state.steer = steerSchema();
    const methods = scalar(state.steer.method).choices;
    const picker = $("method");
    picker.replaceChildren(...methods.map((m) => el("option", m)));
    picker.value = methods.includes("query") ? "query" : methods.find((m) => m !== "none") || methods[0];
    buildOptions();
  }

  function buildOptions() {
    const method = $("method").value;
    const box = $("options");
    const kept = new Map([...box.querySelectorAll("[data-option]")].map((input) => [input.dataset.option, input.value])); // a value stays while its field does
    box.replaceChildren(box.querySelector("legend"));
    if (method === "none") {
      box.append(el("span", "none steers nothing: it answers over the stored context as it is.", "muted"));
      return;
    }
    for (const [name, prop] of Object.entries(state.steer)) {
      const owners = prop["x-methods"];
      const mine = owners ? owners.includes(method) : SHARED_OPTIONS.includes(name);
      const type = mine ? scalar(prop) : null;
      if (!type) continue;
      const label = el("label", name);
      label.title = prop.description || "";
      let input;
      if (type.kind === "choice") {
        input = el("select");
        input.append(el("option", "default"));
        input.firstChild.value = "";
        for (const c of type.choices) input.append(el("option", c));
      } else {
        input = el("input");
        input.type = "number";
        input.step = type.kind === "integer" ? "1" : "any";
        input.placeholder = "default";
        const low = type.minimum ?? type.exclusiveMinimum;
        const high = type.maximum ?? type.exclusiveMaximum;
        if (low !== undefined) input.min = low;
        if (high !== undefined) input.max = high;
      }
      input.dataset.option = name;
      input.dataset.kind = type.kind;
      if (kept.has(name)) input.value = kept.get(name);
      label.append(input);
      box.append(label);
    }
  }

  function chosenOptions() {
    const out = {};
    for (const input of $("options").querySelectorAll("[data-option]")) {
      if (input.value === "") continue;
      const kind = input.dataset.kind;
      out[input.dataset.option] = kind === "integer" ? parseInt(input.value, 10) : kind === "number" ? parseFloat(input.value) : input.value;
    }
    return out;
  }

  // -- connecting (and the API key) -------------------------------------------------------------
  async function connect() {
    try {
      const models = await api("/v1/models");
      state.model = models.data[0];
      $("model").textContent = `${state.model.id} · ${state.model.max_model_len} tokens`;
      say(apiKey ? "connected with the key" : "connected", "ok");
      await listContexts(false);
    } catch (e) {
      say(e.message, "error");
      if (e.status === 401) $("key").focus();
    }
  }

  function useKey(event) {
    event.preventDefault();
    const input = $("key");
    apiKey = input.value.trim() || null;
    input.value = ""; // the key is kept in the variable, not in the page
    input.placeholder = apiKey ? "key set (enter another to change it)" : "this server needs a key";
    connect();
  }

  // -- contexts ---------------------------------------------------------------------------------
  async function register() {
    const text = $("context-text").value;
    if (!text.trim()) {
      say("paste a context (or load a file) first", "error");
      return;
    }
    busy(true);
    try {
      const record = await api("/v1/contexts", "POST", {context: text});
      state.texts.set(record.id, text);
      select(record, text);
      const how = record.cache === "miss" ? `prepared now: ${record.context_prefill_tokens} tokens prefilled` : `reused (${record.cache}): 0 tokens prefilled`;
      fact($("context-info"), "registration", how, "registration");
      say(`registered ${record.id.slice(0, 16)}…`, "ok");
      await listContexts(false);
    } catch (e) {
      say(e.message, "error");
    } finally {
      busy(false);
    }
  }

  function fact(list, name, value, key) {
    list.append(el("dt", name));
    const dd = el("dd", value);
    if (key) dd.dataset.fact = key;
    list.append(dd);
  }

  function select(record, text) {
    state.context = {id: record.id, text, record};
    state.shown = null;
    const info = $("context-info");
    info.replaceChildren();
    fact(info, "id", record.id, "id");
    fact(info, "tokens", record.context_tokens, "context_tokens");
    fact(info, "cached", record.cached ? "yes (its KV is in the store)" : "no (prepared again on the next question)", "cached");
    renderContext(null);
    renderHistory();
    clearAnswers();
    for (const li of $("contexts").children) li.classList.toggle("current", li.dataset.id === record.id);
  }

  async function listContexts(more) {
    const list = $("contexts");
    try {
      const page = await api(`/v1/contexts?limit=${PAGE}` + (more && state.after ? `&after=${encodeURIComponent(state.after)}` : ""));
      if (!more) list.replaceChildren();
      for (const record of page.data) {
        const li = el("li");
        li.dataset.id = record.id;
        li.classList.toggle("current", state.context !== null && state.context.id === record.id);
        const button = el("button", record.context_preview.slice(0, 90) + (record.context_preview.length > 90 ? "…" : ""));
        button.type = "button";
        button.title = record.id;
        button.addEventListener("click", () => select(record, state.texts.get(record.id) ?? null));
        li.append(button, el("div", `${record.id.slice(0, 16)}… · ${record.context_tokens} tokens · ${record.cached ? "cached" : "not cached"}` +
                                    (record.pinned ? " · pinned" : ""), "meta"));
        list.append(li);
      }
      state.after = page.last_id;
      $("more").hidden = !page.has_more;
      if (!list.children.length) list.append(el("li", "none yet", "muted"));
    } catch (e) {
      list.replaceChildren(el("li", `the listing is not available: ${e.message}`, "muted"));
      $("more").hidden = true;
    }
  }

  // -- the context, shaded by the evidence distribution -------------------------------------------
  function renderContext(entry) {
    const view = $("context-view");
    view.replaceChildren();
    $("hover").textContent = "Hover a sentence to see its share of the evidence.";
    const ctx = state.context;
    if (!ctx) return;
    if (ctx.text === null) {
      view.append(el("span", ctx.record.context_preview), el("span", "\n\n(only the first words are known here: the full text is shown for contexts registered from this tab; " +
                                                                      "paste it again to see the shading: the same text gets the same id)", "note"));
      return;
    }
    const steer = entry && entry.steered ? entry.steered.steer : null;
    const d = steer && steer.distribution;
    if (!d || !d.spans || d.spans.length !== d.shares.length) {
      view.textContent = ctx.text;
      return;
    }
    const chosen = new Set((steer.evidence || []).map((e) => e.unit));
    const top = Math.max(...d.shares, 0);
    const applied = !d.backed_off && d.alpha_applied < 1;
    let at = 0;
    d.spans.forEach(([start, end], u) => {
      if (start > at) view.append(document.createTextNode(ctx.text.slice(at, start)));
      const span = el("span", ctx.text.slice(start, end), "unit");
      const share = d.shares[u];
      span.dataset.unit = u;
      span.dataset.share = share;
      span.dataset.strength = applied ? d.strength[u] : 0;
      span.style.backgroundColor = `rgba(245, 158, 11, ${top > 0 ? (0.75 * share / top).toFixed(3) : 0})`;
      if (chosen.has(u)) span.classList.add("chosen");
      const how = applied ? `steering strength ${d.strength[u].toFixed(2)} of log(alpha) (${d.strength[u] === 0 ? "emphasised" : "down-weighted"})` : "not steered";
      span.title = `${d.kind} ${u + 1}: share ${pct(share)} of the evidence; ${how}${chosen.has(u) ? "; chosen" : ""}`;
      view.append(span);
      at = Math.max(at, end);
    });
    if (at < ctx.text.length) view.append(document.createTextNode(ctx.text.slice(at)));
  }

  function hover(event) {
    const unit = event.target.closest && event.target.closest(".unit");
    if (unit) $("hover").textContent = unit.title;
  }

  // -- asking -------------------------------------------------------------------------------------
  function card(slot) {
    const node = $(`answer-${slot}`);
    return {node, title: node.querySelector("h3"), text: node.querySelector(".text"), stats: node.querySelector(".stats")};
  }

  function clearAnswers() {
    for (const slot of ["steered", "none"]) {
      const c = card(slot);
      c.text.textContent = "";
      c.stats.replaceChildren();
      c.node.classList.remove("running", "failed");
    }
    $("steering-summary").textContent = "Ask a question to see the evidence each unit got and the steering applied.";
    $("evidence").replaceChildren();
  }

  async function ask(event) {
    event.preventDefault();
    const ctx = state.context;
    const question = $("question").value.trim();
    if (!ctx) return say("register a context (or pick one from the list) first", "error");
    if (!question) return say("type a question first", "error");
    const method = $("method").value;
    const options = chosenOptions();
    const maxTokens = Math.max(1, parseInt($("max-tokens").value, 10) || 48);
    const entry = {question, method, options, steered: null, none: null};
    clearAnswers();
    $("answer-none").hidden = method === "none";
    busy(true);
    say("answering…");
    const runs = [stream("steered", ctx.id, method, options, question, maxTokens)];
    if (method !== "none") runs.push(stream("none", ctx.id, "none", {}, question, maxTokens));
    const results = await Promise.allSettled(runs);
    busy(false);
    const failed = results.find((r) => r.status === "rejected");
    [entry.steered, entry.none] = results.map((r) => (r.status === "fulfilled" ? r.value : null));
    if (failed) {
      say(failed.reason.message, "error");
      if (!entry.steered) return;
    } else {
      say("answered", "ok");
    }
    if (!state.history.has(ctx.id)) state.history.set(ctx.id, []);
    state.history.get(ctx.id).push(entry);
    show(entry);
    renderHistory();
  }

  async function stream(slot, contextId, method, options, question, maxTokens) {
    const c = card(slot);
    c.title.textContent = slot === "none" ? "none (unsteered)" : method;
    c.node.classList.add("running");
    const body = {messages: [{role: "user", content: question}], max_tokens: maxTokens, temperature: 0, stream: true, stream_options: {include_usage: true},
                  steer: {context_id: contextId, method, ...options}};
    if (state.model) body.model = state.model.id;
    const t0 = performance.now();
    let first = null;
    const result = {method, text: "", steer: null, usage: null, finish: null, ttft_ms: null, tokens_per_s: null};
    try {
      const response = await fetch("/v1/chat/completions", {method: "POST", headers: headers(true), body: JSON.stringify(body)});
      if (!response.ok) throw await failure(response);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const payload = line.slice(5).trim();
            if (payload === "[DONE]") continue;
            const message = JSON.parse(payload);
            if (message.error) throw new ApiError(0, message.error.message);
            for (const choice of message.choices || []) {
              const piece = choice.delta && choice.delta.content;
              if (piece) {
                if (first === null) first = performance.now();
                result.text += piece;
                c.text.textContent = result.text;
              }
              if (choice.finish_reason) result.finish = choice.finish_reason;
            }
            if (message.steer) result.steer = message.steer;
            if (message.usage) result.usage = message.usage;
          }
        }
      }
    } catch (e) {
      c.node.classList.remove("running");
      c.node.classList.add("failed");
      c.text.textContent = e.message;
      throw e;
    }
    const end = performance.now();
    const tokens = result.usage ? result.usage.completion_tokens : null;
    result.ttft_ms = first === null ? null : first - t0;
    result.tokens_per_s = first !== null && tokens > 1 && end > first ? (tokens - 1) / ((end - first) / 1000) : null;
    c.node.classList.remove("running");
    renderAnswer(slot, result);
    return result;
  }

  function renderAnswer(slot, result) {
    const c = card(slot);
    c.title.textContent = slot === "none" ? "none (unsteered)" : `${result.method}${result.method === "none" ? "" : " (steered)"}`;
    c.text.textContent = result.text || "(empty answer)";
    c.stats.replaceChildren();
    fact(c.stats, "time to first token", result.ttft_ms === null ? "–" : `${Math.round(result.ttft_ms)} ms`, "ttft_ms");
    fact(c.stats, "tokens/s", result.tokens_per_s === null ? "–" : result.tokens_per_s.toFixed(1), "tokens_per_s");
    fact(c.stats, "tokens", result.usage ? `${result.usage.completion_tokens} (${result.finish || "?"})` : "–", "completion_tokens");
    const s = result.steer;
    if (s) {
      fact(c.stats, "context prefill tokens", s.context_prefill_tokens, "context_prefill_tokens");
      const reused = s.context_prefill_tokens === 0 ? `reused, ${s.context_tokens} tokens (${s.cache})` : `prefilled now (${s.cache})`;
      fact(c.stats, "context", reused, "context");
    }
  }

  function show(entry) {
    state.shown = entry;
    clearAnswers();
    $("answer-none").hidden = entry.none === null;
    if (entry.steered) renderAnswer("steered", entry.steered);
    if (entry.none) renderAnswer("none", entry.none);
    renderContext(entry);
    renderSteering(entry);
    for (const li of $("history").children) li.classList.toggle("current", li.entry === entry);
  }

  function renderSteering(entry) {
    const summary = $("steering-summary");
    const list = $("evidence");
    list.replaceChildren();
    const s = entry.steered && entry.steered.steer;
    if (!s) {
      summary.textContent = "The answer carried no steering statistics.";
      return;
    }
    const d = s.distribution;
    if (!d) {
      summary.textContent = s.method === "none" ? "none steers nothing." :
        `${s.method} reports no evidence distribution; it emphasised ${s.selected_tokens} of ${s.context_tokens} context tokens.`;
      return;
    }
    const strength = d.backed_off ? "the self-check backed off: answered unsteered" :
      d.alpha_applied >= 1 ? "nothing steered (alpha applied 1)" : `alpha applied ${d.alpha_applied} (the strongest down-weighting of the other units)`;
    summary.textContent = `${s.method}: ${strength}; hedge ${d.hedge}. Chosen ${d.kind}(s) are outlined in the context.`;
    summary.dataset.alphaApplied = d.alpha_applied;
    const order = d.shares.map((share, u) => [share, u]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    const chosen = new Set((s.evidence || []).map((e) => e.unit));
    for (const [share, u] of order.slice(0, 5)) {
      const li = el("li");
      const bar = el("span", null, "bar");
      bar.style.width = `${Math.round(120 * share)}px`;
      const words = state.context && state.context.text && d.spans ? state.context.text.slice(d.spans[u][0], d.spans[u][1]).slice(0, 80) : "";
      li.append(bar, el("strong", `${d.kind} ${u + 1}: ${pct(share)}${chosen.has(u) ? " (chosen)" : ""}`), el("span", words ? ` “${words}”` : "", "muted"));
      list.append(li);
    }
  }

  function renderHistory() {
    const list = $("history");
    list.replaceChildren();
    const entries = state.context ? state.history.get(state.context.id) || [] : [];
    if (!entries.length) list.append(el("li", "no questions yet", "muted"));
    for (const entry of entries) {
      const li = el("li");
      li.entry = entry;
      const button = el("button", entry.question);
      button.type = "button";
      button.addEventListener("click", () => show(entry));
      const s = entry.steered && entry.steered.steer;
      const picks = s && s.evidence && s.evidence.length ? s.evidence.map((e) => `${e.kind} ${e.unit + 1} (${pct(e.score)})`).join(", ") : "no evidence reported";
      li.append(button, el("div", `${entry.method}: ${picks}`, "pick"));
      li.classList.toggle("current", entry === state.shown);
      list.append(li);
    }
  }

  // -- wiring -------------------------------------------------------------------------------------
  function busy(on) {
    for (const id of ["ask", "register"]) $(id).disabled = on;
  }

  function loadFile() {
    const file = $("context-file").files[0];
    if (!file) return;
    file.text().then((text) => {
      $("context-text").value = text;
      say(`loaded ${file.name} (${text.length} characters): register it to use it`);
    }, (e) => say(`could not read ${file.name}: ${e.message}`, "error"));
  }

  async function start() {
    $("key-form").addEventListener("submit", useKey);
    $("register").addEventListener("click", register);
    $("context-file").addEventListener("change", loadFile);
    $("ask-form").addEventListener("submit", ask);
    $("method").addEventListener("change", buildOptions);
    $("refresh").addEventListener("click", () => listContexts(false));
    $("more").addEventListener("click", () => listContexts(true));
    $("context-view").addEventListener("mouseover", hover);
    renderHistory();
    try {
      const response = await fetch("/openapi.json");
      state.schema = await response.json();
      buildMethodPicker();
    } catch (e) {
      say(`could not read the server's schema (/openapi.json): ${e.message}`, "error");
    }
    await connect();
    document.body.dataset.ready = "1"; // for tests and scripts: the page has connected (or said why not)
  }

  start();
})();
