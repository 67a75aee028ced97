// guardrail chat page: streams an answer from this server and shows the guard's checks live.
//
// Local mode uses POST /v1/generate (server-sent events token / score / intercept / done),
// which carries every safety score, the prefill and the guard switch. Proxy mode uses the
// OpenAI-compatible POST /v1/chat/completions stream; its last chunk says whether and where
// the guard acted. Both show the harm categories that fired, prompt and answer apart, as
// badges under the answer: local mode from each score / intercept event, proxy mode from the
// last chunk's `guardrail` field.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "guardrail.apiKey";
  const state = { mode: "local", history: [], controller: null };

  // -- small helpers ---------------------------------------------------------------------
  function headers() {
    const h = { "Content-Type": "application/json", Accept: "text/event-stream" };
    const key = $("api_key").value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  function numberValue(id, fallback) {
    const v = Number($(id).value);
    return Number.isFinite(v) ? v : fallback;
  }

  function guardConfig() {
    return {
      strategy: $("strategy").value,
      period: Math.max(1, Math.round(numberValue("period", 4))),
      threshold: Math.min(1, Math.max(0, numberValue("threshold", 0.5))),
      tau: Math.max(1, Math.round(numberValue("tau", 3))),
      hold_back: Math.max(0, Math.round(numberValue("hold_back", 4))),
      action: $("action").value,
      check_prompt: $("check_prompt").checked,
    };
  }

  function announce(text) {
    const el = $("announcer");
    el.textContent = "";
    window.setTimeout(() => { el.textContent = text; }, 50);
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
    $("transcript").setAttribute("aria-busy", busy ? "true" : "false");
  }

  // Colour for a score in [0, 1]: green (safe) through amber to red (unsafe).
  function scoreClass(score, threshold) {
    if (score === null || score === undefined) return "s-none";
    if (score >= threshold) return "s-bad";
    if (score >= threshold * 0.5) return "s-warn";
    return "s-ok";
  }

  // -- server-sent events over fetch (EventSource cannot POST or send a key) ---------------
  async function* readSSE(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let name = "message";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield { event: name, data: data.join("\n") };
          name = "message";
          data = [];
        } else if (line.startsWith(":")) {
          continue;
        } else if (line.startsWith("event:")) {
          name = line.slice(6).trim();
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        }
      }
    }
    if (data.length) yield { event: name, data: data.join("\n") };
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) { /* not JSON */ }
    return response.status + " " + response.statusText;
  }

  // -- one assistant message: released text, score track, intercept marker -----------------
  class AnswerView {
    constructor(threshold, guard) {
      const node = $("assistant-template").content.firstElementChild.cloneNode(true);
      $("transcript").appendChild(node);
      this.node = node;
      this.answer = node.querySelector('[data-role="answer"]');
      this.marker = node.querySelector('[data-role="intercept"]');
      this.spark = node.querySelector('[data-role="spark"]');
      this.summary = node.querySelector('[data-role="summary"]');
      this.categoryBox = node.querySelector('[data-role="categories"]');
      this.categoryRows = {
        prompt: node.querySelector('[data-role="prompt-categories"]'),
        answer: node.querySelector('[data-role="answer-categories"]'),
      };
      this.fired = { prompt: new Map(), answer: new Map() };
      this.threshold = threshold;
      this.guard = guard;
      this.scores = [];
      this.pieces = [];
      this.text = "";
      this.intercepted = false;
      node.dataset.state = "streaming";
      node.scrollIntoView({ block: "end" });
    }

    // Score of the check that covered the token at `index` (the first check past it).
    coveringScore(index) {
      for (const s of this.scores) if (s.index > index) return s.score;
      return null;
    }

    addText(index, text, refusal) {
      const span = document.createElement("span");
      span.className = "tok";
      span.textContent = text;
      if (refusal) {
        span.classList.add("refusal");
      } else {
        const score = this.guard ? this.coveringScore(index) : null;
        span.classList.add(scoreClass(score, this.threshold));
        if (score !== null) span.title = "tokens from " + index + ", checked at score " + score.toFixed(3);
      }
      this.answer.appendChild(span);
      this.pieces.push({ index, text, refusal });
      this.text += text;
      this.node.scrollIntoView({ block: "end" });
    }

    addScore(event) {
      this.scores.push(event);
      this.drawSpark();
    }

    drawSpark() {
      const svg = this.spark;
      const ns = "http://www.w3.org/2000/svg";
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      const W = 300;
      const H = 60;
      const last = Math.max(8, ...this.scores.map((s) => s.index));
      const x = (i) => (i / last) * (W - 4) + 2;
      const y = (v) => H - 2 - v * (H - 4);
      const line = document.createElementNS(ns, "line");
      line.setAttribute("x1", "0");
      line.setAttribute("x2", String(W));
      line.setAttribute("y1", String(y(this.threshold)));
      line.setAttribute("y2", String(y(this.threshold)));
      line.setAttribute("class", "thr");
      svg.appendChild(line);
      if (this.scores.length > 1) {
        const poly = document.createElementNS(ns, "polyline");
        poly.setAttribute("points", this.scores.map((s) => x(s.index) + "," + y(s.score)).join(" "));
        poly.setAttribute("class", "trace");
        svg.appendChild(poly);
      }
      for (const s of this.scores) {
        const dot = document.createElementNS(ns, "circle");
        dot.setAttribute("cx", String(x(s.index)));
        dot.setAttribute("cy", String(y(s.score)));
        dot.setAttribute("r", "2.5");
        dot.setAttribute("class", s.unsafe ? "dot bad" : "dot");
        svg.appendChild(dot);
      }
      const top = this.scores.reduce((m, s) => Math.max(m, s.score), 0);
      const unsafe = this.scores.filter((s) => s.unsafe).length;
      const text = this.scores.length + " check" + (this.scores.length === 1 ? "" : "s")
        + ", highest score " + top.toFixed(3) + ", " + unsafe + " over the threshold "
        + this.threshold.toFixed(2);
      this.summary.textContent = text;
      svg.setAttribute("aria-label", "Safety score per check: " + text);
    }

    showIntercept(event) {
      this.intercepted = true;
      this.node.dataset.intercepted = "true";
      const where = event.stage === "prompt" ? "the prompt" : "token " + event.index;
      this.marker.hidden = false;
      this.marker.textContent = "";
      const title = document.createElement("strong");
      title.textContent = "Intercepted";
      this.marker.appendChild(title);
      const detail = document.createElement("span");
      detail.textContent = " at " + where + " — score " + Number(event.score).toFixed(3)
        + " ≥ threshold " + this.threshold.toFixed(2) + ", action: " + event.action
        + ". The withheld text is not shown.";
      this.marker.appendChild(detail);
      announce("The guard intercepted the answer at " + where + ".");
    }

    // Categories that fired, as badges under the answer: `side` is "prompt" or "answer";
    // a category whose action is block is marked as such. Each name shows once per side.
    addCategories(side, flagged, blocked) {
      const seen = this.fired[side];
      const blocking = new Set(blocked || []);
      let changed = false;
      for (const name of (flagged || []).concat(blocked || [])) {
        const block = blocking.has(name);
        if (seen.has(name) && (seen.get(name) || !block)) continue;
        seen.set(name, block);
        changed = true;
      }
      if (!changed) return;
      const row = this.categoryRows[side];
      while (row.children.length > 1) row.removeChild(row.lastChild);
      for (const [name, block] of seen) {
        const badge = document.createElement("span");
        badge.className = block ? "badge block" : "badge";
        badge.dataset.category = name;
        badge.textContent = block ? name + " (block)" : name;
        badge.title = (side === "prompt" ? "The prompt" : "The answer") + " fired the category " + name
          + (block ? "; its rule blocks on its own" : "");
        row.appendChild(badge);
      }
      row.hidden = false;
      this.categoryBox.hidden = false;
      this.node.dataset.categories = [...this.fired.prompt.keys(), ...this.fired.answer.keys()].join(" ");
    }

    noGuardNote() {
      this.summary.textContent = "Guard off: no checks ran, the raw answer is shown.";
      this.node.dataset.guard = "off";
    }

    finish(note) {
      this.node.dataset.state = "done";
      if (note) {
        const p = document.createElement("p");
        p.className = "muted small";
        p.textContent = note;
        this.node.appendChild(p);
      }
    }

    fail(message) {
      this.node.dataset.state = "error";
      const p = document.createElement("p");
      p.className = "error";
      p.setAttribute("role", "alert");
      p.textContent = message;
      this.node.appendChild(p);
    }
  }

  function addUserMessage(text, prefill) {
    const li = document.createElement("li");
    li.className = "msg user";
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = "You";
    const body = document.createElement("div");
    body.textContent = text;
    li.append(who, body);
    if (prefill) {
      const note = document.createElement("p");
      note.className = "muted small";
      note.textContent = "Prefill attack: the assistant turn is forced to start with a hidden prefix.";
      li.appendChild(note);
    }
    $("transcript").appendChild(li);
  }

  // -- the two ways to get an answer --------------------------------------------------------
  async function runLocal(view, messages, config, guard, prefill, signal) {
    const body = { messages, guard, config, max_new_tokens: Math.round(numberValue("max_tokens", 64)) };
    if (prefill) body.prefill = prefill;
    const response = await fetch("v1/generate", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    let usage = null;
    let promptCheck = guard && config.check_prompt;  // the first check reads the prompt alone
    for await (const msg of readSSE(response)) {
      const event = JSON.parse(msg.data);
      if (msg.event === "token") { promptCheck = false; view.addText(event.index, event.text, view.intercepted); }
      else if (msg.event === "score") {
        const side = promptCheck && event.index === 0 ? "prompt" : "answer";
        promptCheck = false;
        view.addCategories(side, event.flagged_categories, event.blocked_categories);
        view.addScore(event);
      }
      else if (msg.event === "intercept") {
        view.addCategories(event.stage === "prompt" ? "prompt" : "answer", event.flagged_categories, []);
        view.showIntercept(event);
      }
      else if (msg.event === "done") usage = event.usage;
      else if (msg.event === "error") throw new Error((event.error && event.error.message) || "stream failed");
    }
    if (!usage) return "";
    const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");
    return plural(usage.completion_tokens, "response token") + ", " + plural(usage.checks, "check");
  }

  async function runProxy(view, messages, config, signal) {
    const body = { messages, stream: true, guardrail: config,
                   max_tokens: Math.round(numberValue("max_tokens", 64)) };
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    let note = "";
    for await (const msg of readSSE(response)) {
      if (msg.data === "[DONE]") break;
      const chunk = JSON.parse(msg.data);
      if (chunk.error) throw new Error(chunk.error.message || "upstream failed");
      const choice = (chunk.choices || [])[0] || {};
      const info = chunk.guardrail;
      if (info && info.prompt) {
        view.addCategories("prompt", info.prompt.flagged_categories, info.prompt.blocked_categories);
      }
      if (info) view.addCategories("answer", info.response_flagged_categories, info.response_blocked_categories);
      if (info && info.intercept) view.showIntercept(info.intercept);
      const content = choice.delta && choice.delta.content;
      if (content) view.addText(view.pieces.length, content, view.intercepted);
      if (info) note = info.checks + " checks (proxy mode: scores are reported per answer, not per token)";
    }
    return note;
  }

  async function send(event) {
    if (event) event.preventDefault();
    if (state.controller) return;
    const text = $("message").value.trim();
    if (!text) { $("message").focus(); return; }
    const guard = $("guard").checked;
    const config = guardConfig();
    const prefill = state.mode === "local" && $("prefill_on").checked ? $("prefill").value : "";
    const messages = state.history.concat([{ role: "user", content: text }]);
    addUserMessage(text, Boolean(prefill));
    $("message").value = "";
    const view = new AnswerView(config.threshold, guard || state.mode === "proxy");
    if (!guard && state.mode === "local") view.noGuardNote();
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    try {
      const note = state.mode === "proxy"
        ? await runProxy(view, messages, config, controller.signal)
        : await runLocal(view, messages, config, guard, prefill, controller.signal);
      view.finish(note);
      state.history = messages.concat([{ role: "assistant", content: view.text || "(no answer)" }]);
      if (!view.intercepted) announce("Answer complete.");
    } catch (err) {
      if (err.name === "AbortError") {
        view.finish("Stopped.");
      } else {
        view.fail("Request failed: " + err.message);
        if (/API key/i.test(err.message)) $("api_key").focus();
      }
    } finally {
      state.controller = null;
      setBusy(false);
      if (document.activeElement === document.body || document.activeElement === $("stop")) {
        $("message").focus();
      }
    }
  }

  async function loadStatus() {
    const el = $("server-status");
    try {
      const response = await fetch("readyz");
      const body = await response.json();
      if (response.ok) {
        state.mode = body.mode || "local";
        el.textContent = "Model " + body.model + " ready — " + state.mode + " mode"
          + (state.mode === "proxy" ? " (answers come from the upstream; prefill and guard-off are local only)" : "");
        document.body.dataset.ready = "true";
        document.body.dataset.mode = state.mode;
        const localOnly = state.mode === "proxy";
        $("prefill_on").disabled = localOnly;
        $("guard").disabled = localOnly;
        return;
      }
      el.textContent = body.status === "failed" ? "The model failed to load: " + body.error : "Loading the model…";
    } catch (_) {
      el.textContent = "Cannot reach the server; retrying…";
    }
    window.setTimeout(loadStatus, 1000);
  }

  function init() {
    const saved = window.sessionStorage.getItem(KEY_STORE);
    if (saved) $("api_key").value = saved;
    $("api_key").addEventListener("input", () => {
      const key = $("api_key").value.trim();
      if (key) window.sessionStorage.setItem(KEY_STORE, key);
      else window.sessionStorage.removeItem(KEY_STORE);
    });
    $("composer").addEventListener("submit", send);
    $("message").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) send(e);
    });
    $("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
    $("clear").addEventListener("click", () => {
      if (state.controller) state.controller.abort();
      state.history = [];
      $("transcript").textContent = "";
      announce("Conversation cleared.");
      $("message").focus();
    });
    $("settings").addEventListener("submit", (e) => e.preventDefault());
    loadStatus();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
