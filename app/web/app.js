/* charrnn's web page: playground, training dashboard and model comparison, on the service's public API.
 *
 * Safe by construction: everything that comes from the API or a person (model output, training text,
 * model names, error messages) is inserted with textContent or as text nodes, never as HTML; the page
 * runs under a Content-Security-Policy that allows only its own scripts and styles. Streams are read
 * with fetch (EventSource cannot send the API key).
 */
(() => {
  "use strict";

  const KEY_STORAGE = "charrnn.apiKey"; // sessionStorage: the key lives as long as the browser session
  const JOB_STORAGE = "charrnn.jobId"; // the job this tab follows, so a reload picks it up again
  const LOGPROBS = 5; // alternatives shown for each character
  const SAMPLES_SHOWN = 6;

  const $ = (id) => document.getElementById(id);

  /** An element with properties and children; strings become text nodes (never HTML). */
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role" || key === "for") {
        node.setAttribute(key, String(value));
      } else node[key] = value;
    }
    for (const child of children) {
      if (child !== undefined && child !== null && child !== false) node.append(child);
    }
    return node;
  }

  // ---- formatting --------------------------------------------------------------------------

  const numberFormat = new Intl.NumberFormat("en-US");

  function visibleChar(c) {
    if (c === " ") return "\u2423"; // ␣
    if (c === "\n") return "\u23CE"; // ⏎
    if (c === "\t") return "\u21E5"; // ⇥
    if (c === "\r") return "\\r";
    const code = c.codePointAt(0);
    if (code < 32 || (code >= 0x7f && code < 0xa0)) return "U+" + code.toString(16).toUpperCase().padStart(4, "0");
    return c;
  }

  /** A probability as a percentage, rounded down: the shown shares of a distribution never add up past 100. */
  function percent(p) {
    const tenths = Math.floor(p * 1000 + 1e-9);
    if (tenths <= 0) return p > 0 ? "<0.1%" : "0%";
    return (tenths / 10).toFixed(1) + "%";
  }

  function seconds(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return "–";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + String(Math.round(s % 60)).padStart(2, "0") + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }

  const bits = (nats) => nats / Math.LN2;
  const fixed = (x, digits) => (x === null || x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(digits));

  /** Shade class by probability: p0 (likely, no tint) .. p8 (very unlikely). */
  function shade(logprob) {
    const p = Math.exp(logprob);
    const bounds = [0.9, 0.7, 0.5, 0.35, 0.2, 0.1, 0.05, 0.02];
    let k = 0;
    while (k < bounds.length && p < bounds[k]) k += 1;
    return "p" + k;
  }

  // ---- errors ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, param) {
      super(message);
      this.name = "ApiError";
      this.status = status;
      this.param = param || null;
    }
  }

  function describe(err) {
    if (err instanceof ApiError) return err.status ? `${err.message} (HTTP ${err.status})` : err.message;
    return err && err.message ? err.message : String(err);
  }

  function showError(node, err) {
    node.textContent = typeof err === "string" ? err : describe(err);
    node.hidden = false;
  }

  function hideMessage(node) {
    node.hidden = true;
    node.textContent = "";
  }

  function showGlobalError(message) {
    $("global-error-text").textContent = message;
    $("global-error").hidden = false;
  }

  window.addEventListener("error", (e) => showGlobalError("Something went wrong in the page: " + e.message));
  window.addEventListener("unhandledrejection", (e) => showGlobalError("Something went wrong: " + describe(e.reason)));

  // ---- the API -----------------------------------------------------------------------------

  let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";

  function authHeaders(extra) {
    const headers = Object.assign({}, extra);
    if (apiKey) headers.Authorization = "Bearer " + apiKey;
    return headers;
  }

  async function errorOf(response, admin) {
    let message = response.statusText || "the request failed";
    let param = null;
    try {
      const body = await response.json();
      if (body && body.error) {
        message = body.error.message || message;
        param = body.error.param;
      }
    } catch (_) {
      // not the JSON envelope (a proxy's page): the status says enough
    }
    const err = new ApiError(response.status, message, param);
    if (response.status === 401) askForKey(err, admin);
    return err;
  }

  /** fetch on the service's API (a path relative to the page), the key attached; throws ApiError. */
  async function request(method, path, body, options) {
    const opts = options || {};
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: authHeaders(body === undefined ? {} : { "Content-Type": "application/json" }),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: opts.signal,
        cache: "no-store",
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "Cannot reach the service: " + err.message);
    }
    if (!response.ok) throw await errorOf(response, opts.admin);
    return response;
  }

  async function api(method, path, body, options) {
    const response = await request(method, path, body, options);
    return response.status === 204 ? null : response.json();
  }

  /** The `data:` payloads of a Server-Sent Events response, as they arrive. */
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (data) yield data;
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // ---- the API key -------------------------------------------------------------------------

  const keyDialog = $("key-dialog");

  function updateKeyButton() {
    $("key-button").textContent = apiKey ? "API key \u2713" : "API key";
    $("key-button").setAttribute("aria-label", apiKey ? "API key (one is set for this session)" : "API key (none set)");
  }

  function openKeyDialog(reason, isError) {
    const note = $("key-reason");
    note.textContent = reason;
    note.classList.toggle("is-error", Boolean(isError));
    $("key-input").value = "";
    $("key-forget").hidden = !apiKey;
    if (!keyDialog.open) keyDialog.showModal();
    $("key-input").focus();
  }

  function askForKey(err, admin) {
    let reason;
    if (admin && apiKey) {
      reason = "Training, uploading text, activating and deleting models need the admin API key; the key in use " +
        `is not it. The service said: ${err.message}`;
    } else if (admin) {
      reason = "Training, uploading text, activating and deleting models need the admin API key. " +
        `The service said: ${err.message}`;
    } else if (apiKey) {
      reason = `The API key was not accepted. The service said: ${err.message}`;
    } else {
      reason = "This service needs an API key. Enter it to use the page; it is kept for this browser session only.";
    }
    openKeyDialog(reason, true);
  }

  $("key-button").addEventListener("click", () =>
    openKeyDialog(
      apiKey
        ? "A key is set for this session. Enter another to replace it."
        : "Only needed where the service runs with CHARRNN_API_KEY (or CHARRNN_ADMIN_API_KEY for training and model management).",
      false,
    ),
  );
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) {
      $("key-reason").textContent = "Enter a key, or close this dialog.";
      $("key-reason").classList.add("is-error");
      return;
    }
    apiKey = key;
    sessionStorage.setItem(KEY_STORAGE, key);
    keyDialog.close();
    updateKeyButton();
    loadModels();
  });
  $("key-forget").addEventListener("click", () => {
    apiKey = "";
    sessionStorage.removeItem(KEY_STORAGE);
    keyDialog.close();
    updateKeyButton();
  });
  $("key-cancel").addEventListener("click", () => keyDialog.close());

  // ---- tabs --------------------------------------------------------------------------------

  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));

  function selectTab(tab, focus) {
    for (const t of tabs) {
      const selected = t === tab;
      t.setAttribute("aria-selected", String(selected));
      t.tabIndex = selected ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
    const name = tab.id.replace("tab-", "");
    if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
    hideTip();
    if (name === "models") loadModels();
    if (name === "train") resizeChart();
  }

  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab, false));
    tab.addEventListener("keydown", (e) => {
      const i = tabs.indexOf(tab);
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
      if (next === undefined) return;
      e.preventDefault();
      selectTab(tabs[(next + tabs.length) % tabs.length], true);
    });
  }

  function tabFromHash(initial) {
    const tab = $("tab-" + location.hash.slice(1));
    if (tab && tabs.includes(tab)) selectTab(tab, false);
    else if (initial === true) selectTab(tabs[0], false); // (not for #main, the skip link's target)
  }
  window.addEventListener("hashchange", tabFromHash);

  $("global-error-close").addEventListener("click", () => {
    $("global-error").hidden = true;
  });

  // ---- service status ----------------------------------------------------------------------

  let statusTimer = null;

  async function refreshStatus() {
    clearTimeout(statusTimer);
    const pill = $("service-status");
    pill.classList.remove("is-ready", "is-waiting", "is-error");
    try {
      const health = await api("GET", "health");
      if (health.ready) {
        pill.textContent = "ready \u00b7 " + (health.model || "?");
        pill.classList.add("is-ready");
      } else {
        pill.textContent = "loading the model\u2026";
        pill.classList.add("is-waiting");
        statusTimer = setTimeout(refreshStatus, 1000);
      }
    } catch (err) {
      pill.textContent = "service unreachable";
      pill.classList.add("is-error");
      statusTimer = setTimeout(refreshStatus, 5000);
    }
  }

  // ---- stored models (the playground's choice and the Models tab) --------------------------

  let models = [];
  let activeModel = null;
  const selectedForCompare = new Set();

  async function loadModels() {
    try {
      const body = await api("GET", "models");
      models = body.models;
      activeModel = body.active;
      hideMessage($("m-error"));
    } catch (err) {
      showError($("m-error"), err);
      if (err.status !== 401 && $("panel-models").hidden) showGlobalError("Cannot list the models: " + describe(err));
      return;
    }
    renderModelChoice();
    renderModels();
  }

  function renderModelChoice() {
    const select = $("pg-model");
    const chosen = select.value;
    select.replaceChildren(h("option", { value: "", text: activeModel ? `the active model (${activeModel})` : "the active model" }));
    for (const m of models) {
      if (m.ok) select.append(h("option", { value: m.name, text: m.name }));
    }
    select.value = models.some((m) => m.ok && m.name === chosen) ? chosen : "";
  }

  // ---- the character tooltip (playground output and surprisal maps) ------------------------

  const tip = $("tip");
  const charData = new WeakMap(); // span -> {char, logprob, top, click?}
  let tipOwner = null;

  function showTip(span) {
    const data = charData.get(span);
    if (!data) return;
    tipOwner = span;
    const list = h("ul", { class: "tip-list" });
    let chosenListed = false;
    for (const alt of data.top || []) {
      const q = Math.exp(alt.logprob);
      const bar = h("span");
      bar.style.width = Math.max(1, Math.round(q * 100)) + "%"; // CSSOM, which the policy allows
      const isChosen = alt.char === data.char;
      chosenListed = chosenListed || isChosen;
      list.append(
        h(
          "li",
          { class: isChosen ? "tip-alt is-chosen" : "tip-alt" },
          h("span", { class: "tip-char", text: visibleChar(alt.char) }),
          h("span", { class: "tip-bar" }, bar),
          h("span", { class: "tip-pct", text: percent(q) }),
        ),
      );
    }
    const known = data.logprob !== null && data.logprob !== undefined;
    const title = known
      ? `${visibleChar(data.char)}  ${percent(Math.exp(data.logprob))} \u00b7 ${fixed(-data.logprob / Math.LN2, 2)} bits`
      : `${visibleChar(data.char)}  (no probability reported)`;
    const children = [h("div", { class: "tip-title", text: title })];
    if (data.top && data.top.length) {
      children.push(h("div", { class: "tip-note", text: "Likeliest at this point:" }), list);
    }
    if (data.top && data.top.length && !chosenListed) {
      children.push(h("div", { class: "tip-note", text: `Sampled ${visibleChar(data.char)}, outside the ${data.top.length} likeliest.` }));
    }
    if (data.click) children.push(h("div", { class: "tip-note", text: "Click or press Enter to generate again from here." }));
    tip.replaceChildren(...children);
    tip.hidden = false;
    span.setAttribute("aria-describedby", "tip");
    const rect = span.getBoundingClientRect();
    const width = tip.offsetWidth;
    const height = tip.offsetHeight;
    let left = rect.left + window.scrollX;
    left = Math.max(window.scrollX + 8, Math.min(left, window.scrollX + document.documentElement.clientWidth - width - 8));
    let top = rect.bottom + window.scrollY + 6;
    if (rect.bottom + height + 12 > window.innerHeight && rect.top > height + 12) top = rect.top + window.scrollY - height - 6;
    tip.style.left = left + "px";
    tip.style.top = top + "px";
  }

  function hideTip() {
    if (tipOwner) tipOwner.removeAttribute("aria-describedby");
    tipOwner = null;
    tip.hidden = true;
  }

  /** Hover, focus, arrow keys (roving focus inside one text) and Enter on the characters inside `container`. */
  function characterEvents(container) {
    container.addEventListener("mouseover", (e) => {
      const span = e.target.closest(".ch");
      if (span && span !== tipOwner) showTip(span);
    });
    container.addEventListener("mouseout", (e) => {
      const span = e.target.closest(".ch");
      if (span && span === tipOwner && document.activeElement !== span) hideTip();
    });
    container.addEventListener("focusin", (e) => {
      const span = e.target.closest(".ch");
      if (!span) return;
      const text = span.parentElement;
      for (const other of text.querySelectorAll('.ch[tabindex="0"]')) if (other !== span) other.tabIndex = -1;
      span.tabIndex = 0;
      showTip(span);
    });
    container.addEventListener("focusout", (e) => {
      if (e.target.closest(".ch") === tipOwner) hideTip();
    });
    container.addEventListener("click", (e) => {
      const span = e.target.closest(".ch");
      const data = span && charData.get(span);
      if (data && data.click) data.click();
    });
    container.addEventListener("keydown", (e) => {
      const span = e.target.closest(".ch");
      if (!span) return;
      const all = Array.from(span.parentElement.querySelectorAll(".ch"));
      const i = all.indexOf(span);
      const target = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: all.length - 1 }[e.key];
      if (target !== undefined && all[target]) {
        e.preventDefault();
        all[target].focus();
      } else if (e.key === "Enter" || e.key === " ") {
        const data = charData.get(span);
        if (data && data.click) {
          e.preventDefault();
          data.click();
        }
      } else if (e.key === "Escape") {
        hideTip();
      }
    });
  }

  /** A character span, shaded by its probability (when known) and described by the tooltip. */
  function charSpan(char, logprob, data) {
    const classes = ["ch"];
    if (char === "\n") classes.push("nl");
    if (logprob !== null && logprob !== undefined) classes.push(shade(logprob));
    const span = h("span", { class: classes.join(" "), text: char });
    span.tabIndex = -1;
    if (data) charData.set(span, data);
    return span;
  }

  // ---- playground --------------------------------------------------------------------------

  const outputs = $("outputs");
  characterEvents(outputs);
  let running = null; // {controller} of the completion in progress
  let choices = []; // per choice: {prefix, chars: [str], text, node, head}

  function fieldName(input) {
    const label = document.querySelector(`label[for="${input.id}"]`);
    return label ? label.firstChild.textContent.trim() : input.id;
  }

  /** A number field's value: undefined when empty; an error when it is not a number. */
  function numberField(id) {
    const input = $(id);
    if (input.validity && input.validity.badInput) throw new Error(`${fieldName(input)}: not a number`);
    const raw = input.value.trim();
    if (raw === "") return undefined;
    const value = Number(raw);
    if (!Number.isFinite(value)) throw new Error(`${fieldName(input)}: not a number`);
    return value;
  }

  function stopStrings() {
    return $("pg-stop")
      .value.split("\n")
      .filter((line) => line !== "")
      .map((line) => line.replace(/\\n/g, "\n").replace(/\\t/g, "\t"));
  }

  function completionBody() {
    const body = { prefix: $("prefix").value };
    const fields = {
      max_new_chars: "pg-max",
      temperature: "pg-temperature",
      top_k: "pg-top-k",
      top_p: "pg-top-p",
      min_p: "pg-min-p",
      repetition_penalty: "pg-rep",
      seed: "pg-seed",
      n: "pg-n",
    };
    for (const [key, id] of Object.entries(fields)) {
      const value = numberField(id);
      if (value !== undefined) body[key] = value;
    }
    const stop = stopStrings();
    if (stop.length) body.stop = stop;
    const regex = $("pg-regex").value;
    if (regex) body.regex = regex;
    const model = $("pg-model").value;
    if (model) body.model = model;
    body.logprobs = LOGPROBS;
    if ($("pg-stream").checked) body.stream = true;
    return body;
  }

  function curlCommand(body) {
    const url = new URL("complete", document.baseURI).href;
    const json = JSON.stringify(body).replace(/'/g, "'\\''");
    const lines = [`curl -s${body.stream ? "N" : ""} ${url}`, "-H 'content-type: application/json'"];
    if (apiKey) lines.push('-H "authorization: Bearer $CHARRNN_API_KEY"');
    lines.push(`-d '${json}'`);
    return lines.join(" \\\n  ");
  }

  function updateCurl() {
    try {
      $("curl").textContent = curlCommand(completionBody());
    } catch (err) {
      $("curl").textContent = describe(err);
    }
  }

  function choiceFor(index, prefix) {
    if (!choices[index]) {
      if (!choices.length) outputs.replaceChildren();
      const head = h("div", { class: "choice-head" }, h("span", { text: `Completion ${index + 1}` }));
      const text = h("div", { class: "choice-text", role: "group", "aria-label": `Completion ${index + 1}` });
      text.append(h("span", { class: "prefix-text", text: prefix }));
      const caret = h("span", { class: "caret", "aria-hidden": "true" });
      text.append(caret);
      const node = h("div", { class: "choice" }, head, text);
      choices[index] = { prefix, chars: [], node, head, text, caret, finish: null };
      // keep choices in index order whatever order their first text arrives in
      const later = choices.slice(index + 1).find(Boolean);
      outputs.insertBefore(node, later ? later.node : null);
    }
    return choices[index];
  }

  function appendText(choice, text, logprobs) {
    const chars = Array.from(text); // code points, as the service counts characters
    const fragment = document.createDocumentFragment();
    chars.forEach((char, k) => {
      const lp = logprobs && logprobs[k];
      const position = choice.chars.length;
      const data = lp ? { char, logprob: lp.logprob, top: lp.top, click: () => regenerateFrom(choice, position) } : null;
      const span = charSpan(char, lp ? lp.logprob : null, data);
      if (!data) charData.set(span, { char, logprob: null, top: [], click: () => regenerateFrom(choice, position) });
      if (position === 0) span.tabIndex = 0;
      choice.chars.push(char);
      fragment.append(span);
    });
    choice.text.insertBefore(fragment, choice.caret);
  }

  function finishChoice(choice, reason) {
    choice.finish = reason;
    choice.caret.remove();
    choice.head.append(h("span", { text: `finish: ${reason}` }));
  }

  function regenerateFrom(choice, position) {
    const prefix = choice.prefix + choice.chars.slice(0, position).join("");
    $("prefix").value = prefix;
    updateCurl();
    runCompletion();
  }

  function setRunning(on) {
    $("complete").disabled = on;
    $("stop").hidden = !on;
  }

  function resetOutput() {
    hideTip();
    choices = [];
    outputs.replaceChildren();
    $("pg-meta").replaceChildren();
  }

  function showMeta(result, elapsedMs) {
    const meta = $("pg-meta");
    const produced = result.usage ? result.usage.completion_chars : choices.reduce((s, c) => s + (c ? c.chars.length : 0), 0);
    const secs = elapsedMs / 1000;
    const parts = [];
    if (result.model) parts.push(`model ${result.model}`);
    if (result.seed !== undefined) parts.push(`seed ${result.seed}`);
    parts.push(`${numberFormat.format(produced)} chars in ${secs.toFixed(2)} s`);
    if (secs > 0 && produced) parts.push(`${numberFormat.format(Math.round(produced / secs))} chars/s`);
    meta.replaceChildren(parts.join(" \u00b7 "));
    if (result.unknown_chars && result.unknown_chars.length) {
      const unknown = result.unknown_chars.map(visibleChar).join(" ");
      meta.append(h("span", { class: "warn", text: ` \u00b7 not in the vocabulary (read as UNK): ${unknown}` }));
    }
  }

  async function runCompletion() {
    if (running) running.controller.abort();
    hideMessage($("pg-error"));
    let body;
    try {
      body = completionBody();
    } catch (err) {
      showError($("pg-error"), err);
      return;
    }
    resetOutput();
    $("pg-meta").textContent = "generating\u2026";
    const controller = new AbortController();
    const mine = { controller };
    running = mine;
    setRunning(true);
    const started = performance.now();
    let result = {};
    try {
      const response = await request("POST", "complete", body, { signal: controller.signal });
      if (body.stream) {
        let painted = performance.now();
        for await (const data of events(response)) {
          if (data === "[DONE]") break;
          const event = JSON.parse(data);
          if (event.error) throw new ApiError(0, event.error.message);
          for (const c of event.choices || []) {
            const choice = choiceFor(c.index, body.prefix);
            if (c.text) appendText(choice, c.text, c.logprobs);
            if (c.finish_reason) finishChoice(choice, c.finish_reason);
          }
          if (event.usage) result = event;
          if (performance.now() - painted > 30) {
            // let the page paint now and then: the text grows as it is generated
            await new Promise((resolve) => setTimeout(resolve, 0));
            painted = performance.now();
          }
        }
      } else {
        result = await response.json();
        for (const c of result.choices) {
          const choice = choiceFor(c.index, body.prefix);
          appendText(choice, c.completion, c.logprobs);
          finishChoice(choice, c.finish_reason);
        }
      }
      showMeta(result, performance.now() - started);
    } catch (err) {
      if (err.name === "AbortError") {
        $("pg-meta").textContent = "stopped";
      } else {
        $("pg-meta").textContent = "";
        showError($("pg-error"), err);
      }
    } finally {
      for (const choice of choices) if (choice && !choice.finish) choice.caret.remove();
      if (running === mine) {
        running = null;
        setRunning(false);
      }
    }
  }

  async function copyText(text, notice) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
      } else {
        const area = h("textarea", { value: text, readOnly: true, class: "sr-only" });
        document.body.append(area);
        area.select();
        const ok = document.execCommand("copy");
        area.remove();
        if (!ok) throw new Error("the browser refused");
      }
      notice.textContent = "Copied";
    } catch (err) {
      notice.textContent = "";
      showError($("pg-error"), "Could not copy: " + describe(err));
      return;
    }
    setTimeout(() => {
      notice.textContent = "";
    }, 2000);
  }

  $("complete").addEventListener("click", runCompletion);
  $("stop").addEventListener("click", () => running && running.controller.abort());
  $("prefix").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      runCompletion();
    }
  });
  $("clear-output").addEventListener("click", () => {
    if (running) running.controller.abort();
    resetOutput();
    hideMessage($("pg-error"));
    outputs.append(h("p", { class: "empty", text: "Cleared." }));
  });
  $("copy-output").addEventListener("click", () => {
    const texts = choices.filter(Boolean).map((c) => c.prefix + c.chars.join(""));
    if (!texts.length) {
      showError($("pg-error"), "Nothing to copy yet: complete a prefix first.");
      return;
    }
    copyText(texts.join("\n\n"), $("pg-notice"));
  });
  $("copy-curl").addEventListener("click", () => {
    hideMessage($("pg-error"));
    let command;
    try {
      command = curlCommand(completionBody());
    } catch (err) {
      showError($("pg-error"), err);
      return;
    }
    $("curl").textContent = command;
    $("curl-details").open = true;
    copyText(command, $("pg-notice"));
  });
  $("pg-temperature-range").addEventListener("input", () => {
    $("pg-temperature").value = $("pg-temperature-range").value;
    updateCurl();
  });
  $("pg-temperature").addEventListener("input", () => {
    const value = Number($("pg-temperature").value);
    if (Number.isFinite(value)) $("pg-temperature-range").value = String(Math.min(value, 2));
  });
  $("pg-settings").addEventListener("input", updateCurl);
  $("pg-settings").addEventListener("submit", (e) => e.preventDefault());
  $("prefix").addEventListener("input", updateCurl);

  // ---- training ----------------------------------------------------------------------------

  let job = null; // {id, name, done, activated}
  let chart = null;
  let chartData = [[], [], []];
  let samplesShown = "";

  function sourceIsFile() {
    return $("t-source-file").checked;
  }

  function updateTrainForm() {
    $("t-paste-box").hidden = sourceIsFile();
    $("t-file-box").hidden = !sourceIsFile();
    $("t-advanced").hidden = !$("t-mode-advanced").checked;
    const text = $("t-text").value;
    if (!text) $("t-text-count").textContent = "";
    else if ($("t-lines").checked) {
      const lines = text.split(/\r?\n/).filter((s) => s.trim()).length;
      $("t-text-count").textContent = `${numberFormat.format(lines)} sentences`;
    } else $("t-text-count").textContent = `${numberFormat.format(Array.from(text).length)} characters`;
  }
  for (const id of ["t-source-paste", "t-source-file", "t-mode-recommended", "t-mode-advanced", "t-lines"]) {
    $(id).addEventListener("change", updateTrainForm);
  }
  $("t-text").addEventListener("input", updateTrainForm);

  const ADVANCED = {
    hidden_size: "t-hidden",
    num_layers: "t-layers",
    learning_rate: "t-lr",
    epochs: "t-epochs",
    batch_size: "t-batch",
    seq_len: "t-seq",
    dropout: "t-dropout",
    val_fraction: "t-val",
    eval_interval: "t-eval",
    weight_decay: "t-wd",
    seed: "t-seed",
  };

  function uploadCorpus(file) {
    const bar = $("t-upload-bar");
    const label = $("t-upload-label");
    $("t-upload").hidden = false;
    bar.value = 0;
    label.textContent = `uploading ${file.name}\u2026`;
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest(); // fetch reports no upload progress
      xhr.open("POST", "corpora");
      if (apiKey) xhr.setRequestHeader("Authorization", "Bearer " + apiKey);
      xhr.upload.addEventListener("progress", (e) => {
        if (!e.lengthComputable) return;
        bar.value = (100 * e.loaded) / e.total;
        label.textContent = `uploading: ${Math.floor((100 * e.loaded) / e.total)}% of ${numberFormat.format(e.total)} bytes`;
      });
      xhr.addEventListener("load", () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (_) {
          // handled below
        }
        if (xhr.status >= 200 && xhr.status < 300 && body) {
          bar.value = 100;
          label.textContent = `uploaded: ${numberFormat.format(body.chars)} characters`;
          resolve(body);
        } else {
          const message = body && body.error ? body.error.message : xhr.statusText || "the upload failed";
          const err = new ApiError(xhr.status, message);
          if (xhr.status === 401) askForKey(err, true);
          label.textContent = "upload failed";
          reject(err);
        }
      });
      xhr.addEventListener("error", () => {
        label.textContent = "upload failed";
        reject(new ApiError(0, "The upload failed: cannot reach the service"));
      });
      const form = new FormData();
      form.append("file", file);
      xhr.send(form);
    });
  }

  async function startTraining(e) {
    e.preventDefault();
    const error = $("t-error");
    hideMessage(error);
    const body = { name: $("t-name").value.trim() };
    try {
      if (!body.name) throw new Error("Give the model a name.");
      if (!sourceIsFile()) {
        const text = $("t-text").value;
        if (!text.trim()) throw new Error("Paste some text to train on, or upload a file.");
        if ($("t-lines").checked) body.sentences = text.split(/\r?\n/).filter((s) => s.trim());
        else body.corpus = text;
      } else if (!$("t-file").files.length) {
        throw new Error("Choose a file to upload, or paste the text.");
      }
      const budget = numberField("t-max-seconds");
      if (budget !== undefined) body.max_seconds = budget;
      if ($("t-mode-advanced").checked) {
        if ($("t-cell").value) body.cell = $("t-cell").value;
        for (const [key, id] of Object.entries(ADVANCED)) {
          const value = numberField(id);
          if (value !== undefined) body[key] = value;
        }
      }
    } catch (err) {
      showError(error, err.message);
      return;
    }
    if ($("t-activate").checked) body.activate = true;
    if ($("t-overwrite").checked) body.overwrite = true;
    $("t-start").disabled = true;
    try {
      if (sourceIsFile()) body.corpus_id = (await uploadCorpus($("t-file").files[0])).corpus_id;
      const accepted = await api("POST", "train", body, { admin: true });
      followJob(accepted.job_id, body.name);
    } catch (err) {
      showError(error, err);
      $("t-start").disabled = false;
    }
  }
  $("train-form").addEventListener("submit", startTraining);

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function makeChart() {
    const node = $("chart");
    if (chart || node.clientWidth === 0 || typeof uPlot === "undefined") return;
    const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--border"), width: 1 }, ticks: { stroke: cssVar("--border") } };
    chart = new uPlot(
      {
        width: node.clientWidth,
        height: 280,
        scales: { x: { time: false } },
        cursor: { drag: { x: false, y: false } },
        legend: { live: false }, // the latest figures are in the stats above
        axes: [Object.assign({ label: "step" }, axis), Object.assign({ label: "bits per character" }, axis)],
        series: [
          { label: "step" },
          { label: "training", stroke: cssVar("--accent"), width: 2, spanGaps: true, points: { show: false }, value: (u, v) => fixed(v, 3) },
          { label: "validation", stroke: "#e8590c", width: 2, spanGaps: true, points: { show: true, size: 6 }, value: (u, v) => fixed(v, 3) },
        ],
      },
      chartData,
      node,
    );
  }

  function resizeChart() {
    const node = $("chart");
    if (!chart) makeChart();
    else if (node.clientWidth > 0) chart.setSize({ width: node.clientWidth, height: 280 });
  }
  new ResizeObserver(() => resizeChart()).observe($("chart"));

  function updateChart(status) {
    const byStep = new Map();
    for (const p of status.loss_history || []) byStep.set(p.step, [bits(p.train_loss), null]);
    let valPoints = 0;
    for (const e of status.history || []) {
      if (e.val_bpc === null || e.val_bpc === undefined) continue;
      valPoints += 1;
      const entry = byStep.get(e.step) || [null, null];
      entry[1] = e.val_bpc;
      byStep.set(e.step, entry);
    }
    const steps = Array.from(byStep.keys()).sort((a, b) => a - b);
    chartData = [steps, steps.map((s) => byStep.get(s)[0]), steps.map((s) => byStep.get(s)[1])];
    const trainPoints = (status.loss_history || []).length;
    $("chart").setAttribute("data-points", String(trainPoints + valPoints));
    makeChart();
    if (chart) chart.setData(chartData);
    const last = (status.loss_history || []).slice(-1)[0];
    $("chart-summary").textContent = last
      ? `Step ${last.step}: training ${fixed(bits(last.train_loss), 3)} bits per character` +
        (status.val_bpc !== null && status.val_bpc !== undefined ? `, validation ${fixed(status.val_bpc, 3)}` : "")
      : "";
  }

  function updateSamples(status) {
    const withSample = (status.history || []).filter((e) => e.sample !== null && e.sample !== undefined);
    const key = withSample.map((e) => e.step).join(",");
    if (key === samplesShown) return;
    samplesShown = key;
    const list = $("samples");
    list.replaceChildren();
    for (const e of withSample.slice(-SAMPLES_SHOWN).reverse()) {
      const label = `step ${numberFormat.format(e.step)}` + (e.val_bpc !== null && e.val_bpc !== undefined ? ` \u00b7 validation ${fixed(e.val_bpc, 3)} bits/char` : ` \u00b7 training ${fixed(bits(e.train_loss), 3)} bits/char`);
      list.append(h("li", {}, h("div", { class: "sample-step", text: label }), h("p", { class: "sample-text", text: e.sample })));
    }
    $("samples-empty").hidden = withSample.length > 0;
  }

  function updateJob(status) {
    if (job) job.name = status.name;
    const badge = $("job-status");
    badge.hidden = false;
    badge.className = "badge is-" + status.status;
    badge.textContent = status.status;
    $("job-title").textContent = `Training \u201c${status.name}\u201d`;
    $("job-step").textContent = status.total_steps
      ? `${numberFormat.format(status.step)} / ${numberFormat.format(status.total_steps)}`
      : numberFormat.format(status.step);
    $("job-loss").textContent = status.loss !== null && status.loss !== undefined ? fixed(bits(status.loss), 3) : "–";
    $("job-val").textContent = status.val_bpc !== null && status.val_bpc !== undefined ? fixed(status.val_bpc, 3) : "–";
    $("job-speed").textContent = status.chars_per_s ? numberFormat.format(Math.round(status.chars_per_s)) : "–";
    $("job-elapsed").textContent = seconds(status.elapsed);
    $("job-eta").textContent = status.status === "running" ? seconds(status.eta) : "–";
    const progress = $("job-progress");
    if (status.status === "succeeded") progress.value = 1;
    else if (status.eta !== null && status.eta !== undefined && status.elapsed + status.eta > 0) {
      progress.value = status.elapsed / (status.elapsed + status.eta);
    } else if (status.total_steps) progress.value = status.step / status.total_steps;
    updateChart(status);
    updateSamples(status);
    const done = ["succeeded", "failed", "cancelled"].includes(status.status);
    $("job-cancel").hidden = done;
    if (done && job && !job.done) finishJob(status);
  }

  function finishJob(status) {
    job.done = true;
    $("t-start").disabled = false;
    const result = $("job-result");
    result.hidden = false;
    result.className = "result is-" + status.status;
    const text = $("job-result-text");
    if (status.status === "succeeded") {
      const best = status.best_val_loss !== null && status.best_val_loss !== undefined
        ? `best validation ${fixed(bits(status.best_val_loss), 3)} bits/char`
        : `training loss ${fixed(bits(status.loss), 3)} bits/char`;
      text.textContent = `Saved the model \u201c${status.name}\u201d: ${best}, ${numberFormat.format(status.step)} steps in ${seconds(status.elapsed)}.`;
      $("job-activate").hidden = false;
      $("job-try").hidden = false;
      loadModels();
      refreshStatus();
    } else if (status.status === "failed") {
      text.textContent = `The job failed: ${status.error || "no reason given"}`;
      $("job-activate").hidden = true;
      $("job-try").hidden = true;
    } else {
      text.textContent = "The job was cancelled; nothing was saved.";
      $("job-activate").hidden = true;
      $("job-try").hidden = true;
    }
  }

  function resetJobView(name) {
    $("job-empty").hidden = true;
    $("job-body").hidden = false;
    $("job-result").hidden = true;
    $("job-cancel").hidden = false;
    $("job-cancel").disabled = false;
    $("job-progress").value = 0;
    $("job-title").textContent = `Training \u201c${name}\u201d`;
    const badge = $("job-status"); // the previous job's status must not stand for this one
    badge.hidden = false;
    badge.className = "badge is-queued";
    badge.textContent = "queued";
    $("samples").replaceChildren();
    $("samples-empty").hidden = false;
    samplesShown = "";
    chartData = [[], [], []];
    $("chart").setAttribute("data-points", "0");
    if (chart) chart.setData(chartData);
    resizeChart();
  }

  async function followJob(id, name) {
    job = { id, name, done: false };
    sessionStorage.setItem(JOB_STORAGE, id);
    resetJobView(name || "");
    $("t-start").disabled = true;
    const mine = job;
    try {
      const response = await request("GET", `train/${id}/events`, undefined, { admin: true });
      for await (const data of events(response)) {
        if (job !== mine) return;
        if (data === "[DONE]") break;
        updateJob(JSON.parse(data));
      }
    } catch (err) {
      if (err.status === 404) {
        sessionStorage.removeItem(JOB_STORAGE);
        $("job-body").hidden = true;
        $("job-empty").hidden = false;
        $("job-status").hidden = true;
        $("t-start").disabled = false;
        job = null;
        return;
      }
      showError($("t-error"), "Lost the job's progress stream: " + describe(err) + "; polling instead.");
    }
    // the stream ended early (a proxy, a restart): poll until the job is over
    while (job === mine && !mine.done) {
      try {
        updateJob(await api("GET", `train/${id}`, undefined, { admin: true }));
      } catch (err) {
        showError($("t-error"), err);
        $("t-start").disabled = false;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  $("job-cancel").addEventListener("click", async () => {
    if (!job) return;
    $("job-cancel").disabled = true;
    try {
      updateJob(await api("POST", `train/${job.id}/cancel`, undefined, { admin: true }));
    } catch (err) {
      showError($("t-error"), err);
      $("job-cancel").disabled = false;
    }
  });

  async function activate(name, notice, errorNode) {
    hideMessage(errorNode);
    try {
      await api("POST", `models/${encodeURIComponent(name)}/activate`, undefined, { admin: true });
      await loadModels();
      refreshStatus();
      notice(`\u201c${name}\u201d is now the active model.`);
    } catch (err) {
      showError(errorNode, err);
    }
  }

  $("job-activate").addEventListener("click", () =>
    activate(job.name, (message) => {
      $("job-result-text").textContent += " " + message;
      $("job-activate").hidden = true;
    }, $("t-error")),
  );
  $("job-try").addEventListener("click", async () => {
    await loadModels();
    $("pg-model").value = job.name;
    updateCurl();
    selectTab($("tab-playground"), false);
    $("prefix").focus();
  });

  // ---- models ------------------------------------------------------------------------------

  function cell(label, content, className) {
    return h("td", { "data-label": label, class: className }, content);
  }

  function notice(message) {
    const node = $("m-notice");
    node.textContent = message;
    node.hidden = false;
  }

  function renderModels() {
    const body = $("models-body");
    body.replaceChildren();
    for (const name of Array.from(selectedForCompare)) {
      if (!models.some((m) => m.name === name)) selectedForCompare.delete(name);
    }
    if (!models.length) {
      body.append(h("tr", {}, h("td", { colSpan: 8, class: "empty", text: "No stored models yet: train one in the Train tab." })));
      return;
    }
    models.forEach((m, i) => {
      const box = h("input", { type: "checkbox", id: `compare-${i}`, checked: selectedForCompare.has(m.name), disabled: !m.ok });
      box.addEventListener("change", () => {
        if (box.checked) selectedForCompare.add(m.name);
        else selectedForCompare.delete(m.name);
      });
      const nameCell = h("td", { class: "name-cell" }, h("span", { class: "model-name", text: m.name }));
      if (m.active) nameCell.append(h("span", { class: "badge", text: "active" }));
      if (!m.ok) nameCell.append(h("div", { class: "error-text", text: `cannot be read: ${m.error || "unknown error"}` }));
      const details = h("button", { type: "button", class: "button-small", text: "Details", "aria-label": `Details of ${m.name}` });
      details.addEventListener("click", () => showDetails(m.name));
      const activateButton = h("button", { type: "button", class: "button-small", text: "Activate", disabled: m.active || !m.ok, "aria-label": `Activate ${m.name}` });
      activateButton.addEventListener("click", () => activate(m.name, notice, $("m-error")));
      const del = h("button", { type: "button", class: "button-small button-danger", text: "Delete", disabled: m.active, "aria-label": `Delete ${m.name}` });
      if (m.active) del.title = "The active model cannot be deleted: activate another first";
      del.addEventListener("click", () => confirmDelete(m.name, del));
      const size = m.hidden_size ? `${m.hidden_size} \u00d7 ${m.num_layers}` : "–";
      const created = m.created_at ? new Date(m.created_at).toLocaleString() : "–";
      body.append(
        h(
          "tr",
          { class: m.active ? "is-active" : "" },
          h("td", { class: "select" }, box, h("label", { for: `compare-${i}`, class: "sr-only", text: `Compare ${m.name}` })),
          nameCell,
          cell("Cell", (m.cell || "–").toUpperCase()),
          cell("Size", size, "num"),
          cell("Parameters", m.num_parameters ? numberFormat.format(m.num_parameters) : "–", "num"),
          cell("Validation bits/char", fixed(m.val_bpc, 3), "num"),
          cell("Created", created),
          h("td", {}, h("div", { class: "row-actions" }, details, activateButton, del)),
        ),
      );
    });
  }

  function flatten(value, prefix, out) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
    } else {
      out.push([prefix, typeof value === "string" ? value : JSON.stringify(value)]);
    }
    return out;
  }

  async function showDetails(name) {
    hideMessage($("m-error"));
    try {
      const detail = await api("GET", `models/${encodeURIComponent(name)}`);
      const list = $("model-detail-list");
      list.replaceChildren();
      for (const [key, value] of flatten(detail, "", [])) list.append(h("dt", { text: key }), h("dd", { text: value }));
      $("model-detail-title").textContent = `Model \u201c${name}\u201d`;
      $("model-detail").hidden = false;
      $("model-detail").focus();
    } catch (err) {
      showError($("m-error"), err);
    }
  }
  $("model-detail-close").addEventListener("click", () => {
    $("model-detail").hidden = true;
  });

  const confirmDialog = $("confirm-dialog");
  let pendingDelete = null;

  function confirmDelete(name, opener) {
    pendingDelete = { name, opener };
    $("confirm-text").textContent = `Delete the model \u201c${name}\u201d? Its checkpoint is removed from the store; this cannot be undone.`;
    confirmDialog.showModal();
    $("confirm-no").focus();
  }
  $("confirm-no").addEventListener("click", () => confirmDialog.close());
  confirmDialog.addEventListener("close", () => {
    if (pendingDelete && pendingDelete.opener.isConnected) pendingDelete.opener.focus();
  });
  $("confirm-yes").addEventListener("click", async () => {
    const { name } = pendingDelete;
    confirmDialog.close();
    hideMessage($("m-error"));
    try {
      await api("DELETE", `models/${encodeURIComponent(name)}`, undefined, { admin: true });
      selectedForCompare.delete(name);
      $("model-detail").hidden = true;
      await loadModels();
      notice(`Deleted \u201c${name}\u201d.`);
    } catch (err) {
      showError($("m-error"), err);
    }
  });
  $("models-refresh").addEventListener("click", () => {
    $("m-notice").hidden = true;
    loadModels();
  });

  // ---- compare -----------------------------------------------------------------------------

  const compareResults = $("c-results");
  characterEvents(compareResults);

  function surprisalMap(text, chars) {
    const map = h("div", { class: "score-map", role: "group", "aria-label": "Surprisal map" });
    const letters = Array.from(text);
    letters.forEach((char, k) => {
      const lp = chars[k];
      if (!lp) {
        map.append(h("span", { class: "first", text: char }));
        return;
      }
      const span = charSpan(char, lp.logprob, { char, logprob: lp.logprob, top: lp.top });
      if (!map.querySelector(".ch")) span.tabIndex = 0;
      map.append(span);
    });
    return map;
  }

  async function runCompare() {
    hideMessage($("c-error"));
    hideTip();
    const text = $("c-text").value;
    const names = selectedForCompare.size ? Array.from(selectedForCompare) : models.filter((m) => m.ok).map((m) => m.name);
    if (Array.from(text).length < 2) {
      showError($("c-error"), "Write a text of at least 2 characters to score.");
      return;
    }
    if (!names.length) {
      showError($("c-error"), "No model to compare: train one first.");
      return;
    }
    $("c-run").disabled = true;
    compareResults.replaceChildren(h("p", { class: "empty", text: "Scoring\u2026" }));
    const settled = await Promise.allSettled(names.map((model) => api("POST", "score", { text, model, per_char: true, top: 3 })));
    $("c-run").disabled = false;
    const scores = settled.filter((s) => s.status === "fulfilled").map((s) => s.value.bits_per_char);
    const best = scores.length > 1 ? Math.min(...scores) : null;
    compareResults.replaceChildren();
    settled.forEach((outcome, i) => {
      const card = h("article", { class: "score-card", "aria-label": `Score of ${names[i]}` }, h("h3", { text: names[i] }));
      if (outcome.status === "rejected") {
        card.append(h("p", { class: "message message-error", role: "alert", text: describe(outcome.reason) }));
      } else {
        const r = outcome.value;
        const isBest = best !== null && r.bits_per_char === best;
        if (isBest) {
          card.classList.add("is-best");
          card.firstChild.append(h("span", { class: "best-label", text: "best" }));
        }
        card.append(
          h("p", { class: "score-figure" }, h("span", { class: "bpc", text: fixed(r.bits_per_char, 3) }), " ", h("small", { text: "bits/char" })),
          h("p", {
            class: "score-sub",
            text: `perplexity ${fixed(r.perplexity, 2)} \u00b7 ${numberFormat.format(r.chars_scored)} chars scored` +
              (r.unknown_chars ? ` \u00b7 ${r.unknown_chars} not in its vocabulary` : ""),
          }),
          surprisalMap(text, r.chars || []),
        );
      }
      compareResults.append(card);
    });
  }
  $("c-run").addEventListener("click", runCompare);

  // ---- start -------------------------------------------------------------------------------

  updateKeyButton();
  updateTrainForm();
  tabFromHash(true);
  updateCurl();
  refreshStatus();
  loadModels();
  const jobId = sessionStorage.getItem(JOB_STORAGE);
  if (jobId) followJob(jobId, "");
})();
