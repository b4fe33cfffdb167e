// The kb web page: conversations with streamed, cited answers; the cited passages; the document library; feedback.
// Served from kb's own origin under a strict Content-Security-Policy (no inline script or style, nothing from
// another origin). Text from the model, documents or the API only ever reaches the page as text nodes (textContent,
// markdown.js), never as HTML.
//
// Links into the page (fragments, read here, never sent to a server): #key=… signs in (below); #doc=…&chunk=… opens
// the source panel at that chunk, as a clicked [n] citation does (the Slack bot links its sources so), once signed in.
//
// Signing in: the API key comes from the link `kb serve` prints (#key=…, a fragment, so it never reaches a server
// log) or from the paste box. The page sends it once to POST /v1/session, which answers with an HttpOnly cookie
// holding a short-lived signed session token, and then forgets it: the key is never stored where a script could
// read it (no localStorage, no sessionStorage, no cookie a script sees). Behind the company's authenticating proxy
// the session is already there (GET /v1/session says via: "proxy") and no key box is shown. Every request carries
// the header X-KB-Request: 1, which kb requires of cookie-authorised POST/PUT/PATCH/DELETE.

import {formatDate, t, translatePage} from "./i18n.js";
import {markText, renderMarkdown} from "./markdown.js";

const OLD_KEY_ITEM = "kb_api_key";  // where earlier versions of this page kept the key
const REQUEST_HEADER = {"X-KB-Request": "1"};
const FINAL_STATUSES = new Set(["ready", "failed"]);
const POLL_MS = 2000;

const $ = (id) => document.getElementById(id);

function el(tag, {className, text, attrs} = {}, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter(Boolean));
  return node;
}

const state = {
  session: null,          // GET /v1/session's body once signed in
  conversationId: null,   // the conversation on screen (from `done`, or reopened)
  controller: null,       // AbortController of the answer being streamed
  scope: [],              // [{document_id, filename}] an ask is limited to (the library's "ask about these")
  documents: [],          // the last GET /v1/documents
  selected: new Set(),    // document ids ticked in the library
  pollTimer: null,
  uploadRows: new Map(),  // document_id -> the upload list's row, to show its live status
  turns: [],
  panelOpener: null,
  panelGeneration: 0,     // each opening of the source panel; a passage that arrives after a newer opening is dropped
  linkShown: null,        // "document\nchunk" of the source link (#doc=…&chunk=…) the panel shows, if it shows one
};

function api(path, options = {}) {
  const headers = {...REQUEST_HEADER, ...(options.headers || {})};
  return fetch(path, {...options, credentials: "same-origin", headers});
}

// --- errors in words ------------------------------------------------------------------------------------------

/** {status, detail, retryAfter} of a failed response (RFC 9457 problem details, or whatever text came). */
async function problemOf(response) {
  const text = await response.text().catch(() => "");
  let detail = text;
  try {
    const body = JSON.parse(text);
    detail = body.detail || body.title || (body.error && body.error.message) || text;
  } catch { /* not JSON */ }
  const retry = response.headers.get("Retry-After");
  return {status: response.status, detail: String(detail || response.statusText || "").slice(0, 500),
          retryAfter: retry && /^\d+$/.test(retry.trim()) ? Number(retry) : null};
}

/** The words for a failure; a 401 also shows the sign-in box. */
function describe(problem) {
  const {status, detail, retryAfter} = problem;
  if (status === 0) return t("errNetwork");
  if (status === 400 || status === 422) return detail || t("errOther", {status, detail});  // kb's own words
  if (status === 401) {
    showSignedOut(state.session ? t("err401Session") : t("notSignedIn", {detail}));
    return t("err401", {detail});
  }
  if (status === 403) return t("err403", {detail});
  if (status === 404) return t("err404", {detail});
  if (status === 413) return t("err413", {detail});
  if (status === 429) return retryAfter != null ? t("err429", {s: retryAfter}) : t("err429NoWait");
  if (status === 503) return t("err503", {detail});
  if (status === 504) return t("err504", {detail});
  return t("errOther", {status, detail});
}

const NETWORK = {status: 0, detail: "", retryAfter: null};

// --- the session ----------------------------------------------------------------------------------------------

// Each sign-in, check and sign-out starts a new generation: an answer that arrives after a newer one started
// (the check at load racing the #key= link) is ignored.
let sessionGeneration = 0;

function showSession(kind, message) {
  const box = $("key-box");
  box.dataset.state = kind;
  $("key-summary").textContent = message;
  const proxy = kind === "signed-in" && state.session && state.session.via === "proxy";
  $("key-form").hidden = proxy;
  box.classList.toggle("proxy", Boolean(proxy));
  $("sign-out").hidden = kind !== "signed-in" || proxy;
  box.open = kind !== "signed-in";
}

function showSignedOut(message) {
  state.session = null;
  showSession("signed-out", message);
  stopPolling();
  showLinkedSource();  // a source link waits in its panel for the sign-in
}

function signedIn(body) {
  state.session = body;
  showSession("signed-in", t(body.via === "proxy" ? "signedInProxy" : "signedIn", {name: body.name}));
  const scopes = new Set(body.scopes || []);
  $("upload").hidden = !(scopes.has("ingest") || scopes.has("admin"));
  fillGroups();
  loadConversations();
  loadDocuments();
  showLinkedSource({again: true});  // a source link opened before signing in (or that a lapsed session stopped)
}

async function signIn(key) {
  const generation = ++sessionGeneration;
  showSession("pending", t("signingIn"));
  let response;
  try {
    response = await api("/v1/session", {method: "POST", headers: {"Authorization": `Bearer ${key}`}});
  } catch {
    if (generation === sessionGeneration) showSignedOut(t("errNetwork"));
    return;
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    if (generation !== sessionGeneration) return;
    showSignedOut(response.status === 429 ? describe(problem) : t("notSignedIn", {detail: problem.detail}));
    return;
  }
  const body = await response.json();
  if (generation === sessionGeneration) signedIn(body);
}

async function checkSession() {
  const generation = ++sessionGeneration;
  let response;
  try {
    response = await api("/v1/session");
  } catch {
    if (generation === sessionGeneration) showSignedOut(t("errNetwork"));
    return;
  }
  const body = response.ok ? await response.json() : null;
  if (generation !== sessionGeneration) return;
  if (body) signedIn(body);
  else showSignedOut(response.status === 401 ? t("notSignedInPaste") : describe(await problemOf(response)));
}

/** The fragment without its key: what stays in the address bar (a source link beside the key). */
function hashWithout(name) {
  const params = new URLSearchParams(location.hash.slice(1));
  params.delete(name);
  const rest = params.toString();
  return location.pathname + location.search + (rest ? `#${rest}` : "");
}

async function takeKeyFromLink() {
  const key = new URLSearchParams(location.hash.slice(1)).get("key");
  if (!key) return false;
  history.replaceState(history.state, "", hashWithout("key"));  // out of the address bar and the history
  // A link someone sent must not silently swap the session of a signed-in reader for the sender's key (their
  // uploads would then land in the sender's groups): replacing a session takes the reader's consent.
  const current = await api("/v1/session").catch(() => null);
  if (current && current.ok) {
    const body = await current.json();
    if (!window.confirm(t("replaceSession", {name: body.name}))) {
      signedIn(body);
      return true;
    }
  }
  await signIn(key);
  return true;
}

async function signOut() {
  const generation = ++sessionGeneration;
  closeSource();  // (a source link's panel with it: signed out, the link is not one to open at the next sign-in)
  await api("/v1/session", {method: "DELETE"}).catch(() => null);
  if (generation !== sessionGeneration) return;
  showSignedOut(t("signedOut"));
  newConversation();
  $("conversations").replaceChildren();
  $("history").hidden = true;
  state.documents = [];
  renderDocuments();
}

// --- the thread -----------------------------------------------------------------------------------------------

function originalUrl(citation) {
  // The original opens in a new tab straight from kb (the session cookie authorises it). kb serves it as a
  // download, or, for a real PDF, to the browser's PDF viewer at the cited page: never as a page in kb's origin.
  const page = citation.page ? `#page=${citation.page}` : "";
  return `/v1/documents/${encodeURIComponent(citation.document_id)}/file${page}`;
}

function sourceName(c) {
  return c.page ? t("fileAtPage", {name: c.filename, page: c.page}) : c.filename;
}

function newTurn(question) {
  const answer = el("div", {className: "answer", attrs: {"data-state": "waiting"}});
  const turn = {
    question, text: "", citations: [], done: null, answer,
    label: el("p", {className: "answer-label", attrs: {hidden: true}}),
    body: el("div", {className: "answer-body"}),
    note: el("p", {className: "note", attrs: {hidden: true}}),
    sources: el("ol", {className: "sources", attrs: {hidden: true}}),
    feedback: el("div", {className: "feedback", attrs: {hidden: true}}),
    root: null,
  };
  turn.body.append(el("span", {className: "muted thinking", text: t("thinking")}));
  answer.append(el("p", {className: "who", text: t("kb")}), turn.label, turn.body, turn.note, turn.sources, turn.feedback);
  const asked = el("div", {className: "question", attrs: {hidden: !question}},
    el("p", {className: "who", text: t("you")}), el("p", {className: "question-text", text: question}));
  turn.root = el("article", {className: "turn"}, asked, answer);
  for (const old of document.querySelectorAll("#citations")) old.removeAttribute("id");
  turn.sources.id = "citations";
  $("thread").append(turn.root);
  state.turns.push(turn);
  return turn;
}

function citationFor(turn, n) {
  return turn.citations.find((c) => c.n === n);
}

function citationButton(turn, n) {
  const c = citationFor(turn, n);
  if (!c) return el("span", {className: "cite pending", text: `[${n}]`});
  const flags = [c.supported === false ? t("notSupported") : "", c.inferred ? t("inferred") : ""].filter(Boolean);
  const button = el("button", {
    className: "cite" + (c.supported === false ? " unsupported" : "") + (c.inferred ? " inferred" : ""),
    text: `[${n}]`,
    attrs: {type: "button", "data-n": n, "aria-label": `${t("source", {n})}: ${sourceName(c)}${flags.length ? ` (${flags.join(", ")})` : ""}`},
  });
  button.addEventListener("mouseenter", () => showTooltip(button, c));
  button.addEventListener("focus", () => showTooltip(button, c));
  button.addEventListener("mouseleave", hideTooltip);
  button.addEventListener("blur", hideTooltip);
  button.addEventListener("click", () => openSource(c, button));
  return button;
}

let renderQueued = false;

function renderStreaming(turn) {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    if (turn.done) return;
    turn.body.replaceChildren(renderMarkdown(turn.text));
  });
}

function renderFinal(turn) {
  const done = turn.done;
  turn.body.replaceChildren(renderMarkdown(turn.text, {citation: (n) => citationButton(turn, n)}));
  turn.answer.dataset.mode = done.mode || "generate";
  let marked = 0;
  for (const sentence of done.unsupported || []) {
    const found = markText(turn.body, sentence, () => el("mark", {className: "unsupported", attrs: {title: t("unsupportedSentence")}}),
      (node) => Boolean(node.parentElement && node.parentElement.closest("button")));
    if (found) marked += 1;
  }
  if (done.mode === "extract") {
    turn.label.textContent = t("quoted");
    turn.label.hidden = false;
  }
  const notes = [];
  if (done.degraded) notes.push(t("degraded"));
  if (marked) notes.push(t("unsupportedNote"));
  else if (done.grounded === false && done.mode === "generate") notes.push(t("notGrounded"));
  turn.answer.dataset.degraded = done.degraded ? "true" : "false";
  setNote(turn, notes.join(" "));
  renderSources(turn);
  renderFeedback(turn);
}

function setNote(turn, text, className = "note") {
  turn.note.className = className;
  turn.note.textContent = text;
  turn.note.hidden = !text;
}

function renderSources(turn) {
  turn.sources.replaceChildren();
  for (const c of turn.citations) {
    const link = el("a", {text: sourceName(c), attrs: {href: originalUrl(c), target: "_blank", rel: "noopener noreferrer"}});
    const show = el("button", {className: "link show-passage", text: t("showPassage"), attrs: {type: "button"}});
    show.addEventListener("click", () => openSource(c, show));
    const li = el("li", {attrs: {value: c.n}}, link, " ", show);
    if (c.supported === false) li.append(" ", el("span", {className: "badge warn", text: t("notSupported")}));
    if (c.inferred) li.append(" ", el("span", {className: "badge", text: t("inferred"), attrs: {title: t("inferredTitle")}}));
    if (c.snippet) li.append(el("div", {className: "snippet", text: c.snippet}));
    turn.sources.append(li);
  }
  turn.sources.hidden = turn.citations.length === 0;
}

function setBusy(busy) {
  $("ask-button").hidden = busy;
  $("stop").hidden = !busy;
  $("question").setAttribute("aria-busy", busy ? "true" : "false");
}

function showAskError(text) {
  $("ask-error").textContent = text;
  $("ask-error").hidden = !text;
}

function scrollToEnd() {
  const bottom = document.documentElement.scrollHeight - window.innerHeight - window.scrollY;
  if (bottom < 300) window.scrollTo({top: document.documentElement.scrollHeight});
}

function* sseEvents(buffer) {
  let cut;
  while ((cut = buffer.text.search(/\r?\n\r?\n/)) >= 0) {
    const raw = buffer.text.slice(0, cut);
    buffer.text = buffer.text.slice(cut).replace(/^\r?\n\r?\n/, "");
    let name = "message", data = "";
    for (const line of raw.split(/\r?\n/)) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data += (data ? "\n" : "") + line.slice(5).replace(/^ /, "");
    }
    if (data) yield [name, JSON.parse(data)];
  }
}

async function ask(question) {
  if (state.controller || !question) return;
  showAskError("");
  const turn = newTurn(question);
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  scrollToEnd();
  const request = {question, stream: true};
  if (state.conversationId) request.conversation_id = state.conversationId;
  if (state.scope.length) request.document_ids = state.scope.map((d) => d.document_id);
  try {
    const response = await api("/v1/ask", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(request), signal: controller.signal,
    });
    if (!response.ok) {
      failTurn(turn, describe(await problemOf(response)));
      return;
    }
    turn.answer.dataset.state = "streaming";
    turn.answer.setAttribute("aria-busy", "true");  // screen readers read the answer once it is whole
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const buffer = {text: ""};
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer.text += decoder.decode(value, {stream: true});
      for (const [name, payload] of sseEvents(buffer)) {
        if (name === "token") {
          turn.text += payload.text;
          renderStreaming(turn);
          scrollToEnd();
        } else if (name === "citations") {
          turn.citations = payload.citations || [];
        } else if (name === "done") {
          turn.done = payload;
          turn.text = payload.answer;
          if (payload.conversation_id) state.conversationId = payload.conversation_id;
          renderFinal(turn);
          turn.answer.dataset.state = "done";
          loadConversations();
        } else if (name === "error") {
          failTurn(turn, t("errStream", {detail: describe(payload)}));
        }
      }
    }
    if (!turn.done && turn.answer.dataset.state === "streaming") failTurn(turn, t("errStream", {detail: t("errNetwork")}));
  } catch (error) {
    if (controller.signal.aborted) {
      turn.answer.dataset.state = "stopped";
      if (turn.text) turn.body.replaceChildren(renderMarkdown(turn.text));
      else turn.body.replaceChildren();
      setNote(turn, t("stopped"));
    } else {
      failTurn(turn, error instanceof TypeError ? t("errNetwork") : String(error));
    }
  } finally {
    turn.answer.removeAttribute("aria-busy");
    state.controller = null;
    setBusy(false);
    scrollToEnd();
  }
}

function failTurn(turn, message) {
  turn.answer.dataset.state = "error";
  if (turn.text) turn.body.replaceChildren(renderMarkdown(turn.text));
  else turn.body.replaceChildren();
  setNote(turn, message, "note error");
}

function stop() {
  if (state.controller) state.controller.abort();
}

function newConversation() {
  stop();
  state.conversationId = null;
  state.turns = [];
  $("thread").replaceChildren();
  showAskError("");
  closeSource();
  markCurrentConversation();
  closeSidebar();
  showView("ask");
  $("question").focus();
}

// --- citations: the tooltip and the source panel --------------------------------------------------------------

const snippets = new Map();  // chunk_id -> the chunk's text, for citations of a reopened conversation

/** A reopened conversation's citations carry no snippet: fetch the chunk's text once, for the tooltip. */
async function fillSnippet(anchor, c) {
  if (c.snippet || c.preview || !c.chunk_id) return;
  if (!snippets.has(c.chunk_id)) {
    const path = `/v1/documents/${encodeURIComponent(c.document_id)}/chunks/${encodeURIComponent(c.chunk_id)}?neighbours=0`;
    const response = await api(path).catch(() => null);
    snippets.set(c.chunk_id, response && response.ok ? String((await response.json()).chunk?.text || "") : "");
  }
  const text = snippets.get(c.chunk_id);
  if (!text) return;
  c.preview = text.length > 300 ? `${text.slice(0, 300)}…` : text;
  if (!$("tooltip").hidden && anchor.getAttribute("aria-describedby") === "tooltip" &&
      (anchor === document.activeElement || anchor.matches(":hover"))) showTooltip(anchor, c);
}

function showTooltip(anchor, c) {
  if (!c.snippet && !c.preview) fillSnippet(anchor, c);
  const tip = $("tooltip");
  tip.replaceChildren(el("strong", {text: sourceName(c)}));
  if (c.section) tip.append(el("div", {className: "muted small", text: c.section}));
  if (c.supported === false) tip.append(" ", el("span", {className: "badge warn", text: t("notSupported")}));
  if (c.inferred) tip.append(" ", el("span", {className: "badge", text: t("inferred")}));
  if (c.snippet || c.preview) tip.append(el("div", {className: "snippet", text: c.snippet || c.preview}));
  tip.hidden = false;
  const box = anchor.getBoundingClientRect();
  const width = Math.min(360, window.innerWidth - 16);
  tip.style.width = `${width}px`;
  tip.style.left = `${Math.max(8, Math.min(box.left, window.innerWidth - width - 8)) + window.scrollX}px`;
  const below = box.bottom + 6;
  tip.style.top = `${below + window.scrollY}px`;
  const height = tip.getBoundingClientRect().height;
  if (below + height > window.innerHeight && box.top - height - 6 > 0) tip.style.top = `${box.top - height - 6 + window.scrollY}px`;
  anchor.setAttribute("aria-describedby", "tooltip");
}

function hideTooltip() {
  $("tooltip").hidden = true;
}

function sameOriginPath(url) {
  return typeof url === "string" && url.startsWith("/") && !url.startsWith("//") && !url.startsWith("/\\");
}

async function openSource(c, opener) {
  hideTooltip();
  if (!c.linked) forgetSourceLink();
  const generation = showPanel(c.filename ? sourceName(c) : t("sourcePanel"), t("loadingPassage"), opener);
  const body = $("source-body");
  const badges = el("p", {className: "badges"});
  if (c.section) badges.append(el("span", {className: "muted", text: c.section}), " ");
  if (c.supported === false) badges.append(el("span", {className: "badge warn", text: t("notSupported")}), " ");
  if (c.inferred) badges.append(el("span", {className: "badge", text: t("inferred"), attrs: {title: t("inferredTitle")}}));
  let response = null;
  if (c.chunk_id) {
    const path = `/v1/documents/${encodeURIComponent(c.document_id)}/chunks/${encodeURIComponent(c.chunk_id)}?neighbours=1`;
    response = await api(path).catch(() => null);
  }
  if (generation !== state.panelGeneration) return;  // another source was opened meanwhile
  const linkTo = (href, page) => el("a", {className: "original", text: page ? t("openOriginalAtPage", {page}) : t("openOriginal"),
    attrs: {href, target: "_blank", rel: "noopener noreferrer"}});
  if (response && response.ok) {
    const data = await response.json();
    if (generation !== state.panelGeneration) return;
    const chunk = data.chunk || {};
    // A source link names only its chunk: the name and page come with the passage.
    if (!c.filename) $("source-title").textContent = sourceName({filename: data.filename || "", page: chunk.page});
    const passage = el("div", {className: "passage"});
    for (const other of data.before || []) passage.append(el("p", {className: "context", text: other.text}));
    const cited = el("p", {className: "cited"});
    const text = String(chunk.text || "");
    let [start, end] = Array.isArray(c.span) ? c.span : [-1, -1];
    if (!(start >= 0 && end > start && end <= text.length) && c.snippet) {
      start = text.indexOf(c.snippet);
      end = start + c.snippet.length;
    }
    // A citation of a reopened conversation names its chunk but no span: the whole chunk is what it cites.
    if (!(start >= 0 && end > start) && !Array.isArray(c.span) && !c.snippet) [start, end] = [0, text.length];
    if (start >= 0 && end > start) {
      cited.append(text.slice(0, start), el("mark", {className: "span", text: text.slice(start, end)}), text.slice(end));
    } else {
      cited.textContent = text;
    }
    passage.append(cited);
    for (const other of data.after || []) passage.append(el("p", {className: "context", text: other.text}));
    const page = chunk.page || c.page;
    const href = sameOriginPath(data.page_url) ? data.page_url : sameOriginPath(data.original_url) ? data.original_url : originalUrl(c);
    body.replaceChildren(badges, passage, el("p", {}, linkTo(href, page)));
    const mark = body.querySelector("mark");
    if (mark) mark.scrollIntoView({block: "center"});
    return;
  }
  if (c.linked || (response && ![404, 405].includes(response.status))) {
    // A source link has no snippet to fall back on. kb answers 404 alike for a chunk that is gone and one the
    // reader may not see (it never tells which exists): the words say both.
    const problem = response ? await problemOf(response) : NETWORK;
    if (generation !== state.panelGeneration) return;
    const words = c.linked && response && response.status === 404 ? t("linkNotFound") : describe(problem);
    body.replaceChildren(badges, el("p", {className: "error", attrs: {role: "alert"}, text: words}));
    return;
  }
  // The passage route is missing (an older kb) or the chunk is gone: the citation's own snippet.
  const fallback = el("div", {className: "passage"});
  if (c.snippet) fallback.append(el("p", {className: "cited"}, el("mark", {className: "span", text: c.snippet})));
  body.replaceChildren(badges, el("p", {className: "muted small", text: t("passageFallback")}), fallback,
    el("p", {}, linkTo(originalUrl(c), c.page)));
}

/** Opens the source panel with `title` and a note in its body; returns the opening's generation. */
function showPanel(title, note, opener = null) {
  state.panelOpener = opener || null;
  $("source-panel").hidden = false;
  document.body.classList.add("panel-open");
  $("source-title").textContent = title;
  $("source-title").tabIndex = -1;
  $("source-title").focus();
  $("source-body").replaceChildren(el("p", {className: "muted", text: note}));
  return ++state.panelGeneration;
}

function closeSource() {
  const panel = $("source-panel");
  state.panelGeneration += 1;  // a passage still loading is not shown
  forgetSourceLink();
  if (panel.hidden) return;
  panel.hidden = true;
  document.body.classList.remove("panel-open");
  if (state.panelOpener && document.contains(state.panelOpener)) state.panelOpener.focus();
  state.panelOpener = null;
}

// --- source links: #doc=<document_id>&chunk=<chunk_id> ------------------------------------------------------------

/** {document_id, chunk_id} of the source link in the address bar, or null. */
function linkedSource() {
  const params = new URLSearchParams(location.hash.slice(1));
  const documentId = params.get("doc"), chunkId = params.get("chunk");
  return documentId && chunkId ? {document_id: documentId, chunk_id: chunkId} : null;
}

/** Opens the source panel at the linked chunk (once signed in), or closes the panel a link opened when the address
 * bar no longer holds that link (Back past it). */
function showLinkedSource({again = false} = {}) {
  const link = linkedSource();
  if (!link) {
    if (state.linkShown) closeSource();
    return;
  }
  const shown = `${link.document_id}\n${link.chunk_id}`;
  if (!again && state.linkShown === shown && !$("source-panel").hidden) return;  // popstate, then hashchange
  showView("ask");
  state.linkShown = shown;
  if (state.session) openSource({...link, linked: true}, null);
  else {
    showPanel(t("sourcePanel"), t("signInToOpenLink"));  // signedIn() opens it
    if ($("key-box").open && !$("key-form").hidden) $("key").focus();
  }
}

/** The panel no longer shows the linked chunk: the link leaves the address bar too (a reload does not reopen it),
 * replacing this history entry (Back still goes where it went). */
function forgetSourceLink() {
  if (!state.linkShown) return;
  state.linkShown = null;
  if (linkedSource()) history.replaceState(history.state, "", location.pathname + location.search);
}

/** The address bar's fragment changed on an open page: a link opened again, Back or Forward. */
async function followLink() {
  if (await takeKeyFromLink()) return;  // signedIn() then opens a source link that came with the key
  showLinkedSource();
}

const SVG = "http://www.w3.org/2000/svg";

/** A thumb (👍; CSS turns it for 👎) drawn in SVG: no emoji font needed. */
function thumbIcon() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "thumb-icon");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", "M2 21h4V9H2v12zm20-11c0-1.1-.9-2-2-2h-6.3l1-4.6v-.3c0-.4-.2-.8-.5-1.1L13.2 1 6.6 7.6C6.2 8 6 8.5 6 9v10c0 1.1.9 2 2 2h9c.8 0 1.5-.5 1.8-1.2l3-7.1c.1-.2.2-.5.2-.7v-2z");
  svg.append(path);
  return svg;
}

// --- feedback -------------------------------------------------------------------------------------------------

function renderFeedback(turn) {
  const box = turn.feedback;
  box.replaceChildren();
  const up = el("button", {className: "thumb", attrs: {type: "button", "aria-label": t("helpful"), title: t("helpful"), "aria-pressed": "false", "data-rating": "up"}});
  const down = el("button", {className: "thumb down", attrs: {type: "button", "aria-label": t("notHelpful"), title: t("notHelpful"), "aria-pressed": "false", "data-rating": "down"}});
  const comment = el("textarea", {className: "comment", attrs: {rows: 2, placeholder: t("commentPlaceholder"), "aria-label": t("commentPlaceholder")}});
  const send = el("button", {className: "send-feedback", text: t("sendFeedback"), attrs: {type: "submit"}});
  const form = el("form", {className: "feedback-form", attrs: {hidden: true}}, comment, send);
  const result = el("p", {className: "feedback-result", attrs: {role: "status"}});
  up.append(thumbIcon(), el("span", {className: "thumb-label", text: t("helpful")}));
  down.append(thumbIcon(), el("span", {className: "thumb-label", text: t("notHelpful")}));
  let rating = null;
  for (const thumb of [up, down]) {
    thumb.addEventListener("click", () => {
      rating = thumb.dataset.rating;
      up.setAttribute("aria-pressed", String(rating === "up"));
      down.setAttribute("aria-pressed", String(rating === "down"));
      form.hidden = false;
      comment.focus();
    });
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!rating) return;
    send.disabled = true;
    const body = {rating, question: turn.question, answer: turn.text, citations: turn.citations};
    if (comment.value.trim()) body.comment = comment.value.trim();
    if (state.conversationId) body.conversation_id = state.conversationId;
    let response = null;
    try {
      response = await api("/v1/feedback", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    } catch { /* network: below */ }
    send.disabled = false;
    if (response && response.ok) {
      result.textContent = t("thanks");
      result.className = "feedback-result ok";
      form.hidden = true;
      up.disabled = down.disabled = true;
    } else if (response && (response.status === 404 || response.status === 405)) {
      result.textContent = t("feedbackUnavailable");
      result.className = "feedback-result error";
    } else {
      result.textContent = t("feedbackFailed", {detail: describe(response ? await problemOf(response) : NETWORK)});
      result.className = "feedback-result error";
    }
  });
  box.append(up, down, form, result);
  box.hidden = false;
}

// --- past conversations ---------------------------------------------------------------------------------------

async function loadConversations() {
  if (!state.session) return;
  let response;
  try {
    response = await api("/v1/conversations");
  } catch {
    return;
  }
  if (response.status === 404 || response.status === 405) {
    $("history").hidden = true;  // this kb keeps no list of conversations
    return;
  }
  if (!response.ok) return;
  const list = (await response.json()).conversations || [];
  const ul = $("conversations");
  ul.replaceChildren();
  for (const c of list) {
    const title = c.title || t("untitled");
    const open = el("button", {className: "conversation", attrs: {type: "button", "data-id": c.conversation_id}},
      el("span", {className: "title", text: title}),
      el("span", {className: "muted small", text: [formatDate(c.updated_at), c.turns === 1 ? t("turn") : c.turns ? t("turns", {n: c.turns}) : ""].filter(Boolean).join(" · ")}));
    open.addEventListener("click", () => reopenConversation(c.conversation_id));
    const remove = el("button", {className: "delete-conversation", text: "✕",
      attrs: {type: "button", "aria-label": `${t("deleteConversation")}: ${title}`, title: t("deleteConversation")}});
    remove.addEventListener("click", () => deleteConversation(c.conversation_id, title));
    ul.append(el("li", {}, open, remove));
  }
  $("conversations-empty").hidden = list.length > 0;
  $("history").hidden = false;
  markCurrentConversation();
}

function markCurrentConversation() {
  for (const button of document.querySelectorAll("#conversations button.conversation")) {
    if (button.dataset.id === state.conversationId) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

async function reopenConversation(id) {
  stop();
  closeSidebar();
  showView("ask");
  let response;
  try {
    response = await api(`/v1/conversations/${encodeURIComponent(id)}`);
  } catch {
    showAskError(t("errNetwork"));
    return;
  }
  if (!response.ok) {
    showAskError(describe(await problemOf(response)));
    return;
  }
  const data = await response.json();
  $("thread").replaceChildren();
  state.turns = [];
  closeSource();
  showAskError("");
  state.conversationId = data.conversation_id;
  let turn = null;
  for (const message of data.messages || []) {
    if (message.role === "user") {
      turn = newTurn(message.content);
      continue;
    }
    if (!turn) turn = newTurn("");
    turn.text = message.content;
    // The stored sources are every source of the prompt, in [n] order: the list shows those the answer cites.
    const cited = new Set([...message.content.matchAll(/\[(\d{1,4}(?:\s*[,，]\s*\d{1,4})*)\]/g)]
      .flatMap((m) => m[1].split(/\s*[,，]\s*/).map(Number)));
    turn.citations = (message.sources || []).map((s, i) => ({...s, n: i + 1, snippet: "", supported: true, inferred: false}))
      .filter((c) => cited.has(c.n));
    turn.done = {answer: message.content, mode: "generate", unsupported: [], grounded: true};
    renderFinal(turn);
    turn.answer.dataset.state = "done";
    turn = null;
  }
  if (turn) { turn.body.replaceChildren(); turn.answer.dataset.state = "done"; }
  markCurrentConversation();
  $("question").focus();
}

async function deleteConversation(id, title) {
  if (!window.confirm(t("confirmDeleteConversation", {title}))) return;
  const response = await api(`/v1/conversations/${encodeURIComponent(id)}`, {method: "DELETE"}).catch(() => null);
  if (!response || !response.ok) {
    showAskError(describe(response ? await problemOf(response) : NETWORK));
    return;
  }
  if (state.conversationId === id) newConversation();
  loadConversations();
}

// --- the document library -------------------------------------------------------------------------------------

function stopPolling() {
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
}

function schedulePoll(ms) {
  stopPolling();
  state.pollTimer = setTimeout(loadDocuments, ms);
}

async function loadDocuments() {
  stopPolling();
  if (!state.session) return;
  let response;
  try {
    response = await api("/v1/documents");
  } catch {
    libraryError(t("errNetwork"));
    schedulePoll(POLL_MS * 5);
    return;
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    if (response.status === 401) { describe(problem); return; }
    libraryError(t("libraryError", {detail: describe(problem)}));
    if (response.status === 429) schedulePoll(Math.max(POLL_MS, (problem.retryAfter ?? 10) * 1000));
    else if (response.status >= 500) schedulePoll(POLL_MS * 5);
    return;
  }
  libraryError("");
  state.documents = (await response.json()).documents || [];
  renderDocuments();
  updateUploadRows();
  fillGroups();
  if (state.documents.some((d) => !FINAL_STATUSES.has(d.status))) schedulePoll(POLL_MS);
}

function libraryError(text) {
  $("library-status").textContent = text;
  $("library-status").hidden = !text;
}

/** A document's status in words (an unknown one as it came). */
function statusText(status) {
  const text = t(`status_${status}`);
  return text === `status_${status}` ? String(status) : text;
}

function statusCell(d) {
  const cell = el("td", {className: "status"});
  cell.append(el("span", {className: `badge status-${d.status}`, text: statusText(d.status)}));
  const progress = d.progress || {};
  if (d.status === "processing" && progress.stage) {
    const parts = [progress.stage];
    if (progress.chunks_indexed !== undefined && progress.chunks_total) parts.push(`${progress.chunks_indexed}/${progress.chunks_total}`);
    else if (progress.chunks_indexed !== undefined) parts.push(String(progress.chunks_indexed));
    cell.append(" ", el("span", {className: "muted small", text: parts.join(" ")}));
  }
  if (d.status === "failed" && d.error) cell.append(el("div", {className: "error small", text: d.error}));
  return cell;
}

function renderDocuments() {
  const focused = document.activeElement;
  const focusKey = focused && focused.dataset && focused.dataset.doc ? [focused.dataset.doc, focused.dataset.role] : null;
  const query = $("doc-search").value.trim().toLowerCase();
  const scopes = (state.session && state.session.scopes) || [];
  const canDelete = scopes.includes("ingest") || scopes.includes("admin");
  const shown = state.documents.filter((d) => !query || d.filename.toLowerCase().includes(query));
  const rows = $("document-rows");
  rows.replaceChildren();
  const ids = new Set(state.documents.filter((d) => d.status === "ready").map((d) => d.document_id));
  for (const id of [...state.selected]) if (!ids.has(id)) state.selected.delete(id);
  for (const d of shown) {
    const box = el("input", {attrs: {type: "checkbox", "data-doc": d.document_id, "data-role": "select",
      "aria-label": `${t("select")}: ${d.filename}`, disabled: d.status !== "ready"}});
    box.checked = state.selected.has(d.document_id);
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(d.document_id); else state.selected.delete(d.document_id);
      updateAskSelected();
    });
    const actions = el("td", {className: "actions"});
    if (canDelete) {
      const remove = el("button", {className: "danger small-button", text: t("delete"),
        attrs: {type: "button", "data-doc": d.document_id, "data-role": "delete", "aria-label": `${t("delete")}: ${d.filename}`}});
      remove.addEventListener("click", () => deleteDocument(d));
      actions.append(remove);
    }
    rows.append(el("tr", {attrs: {"data-status": d.status, "data-doc": d.document_id}},
      el("td", {}, box),
      el("td", {className: "filename", text: d.filename, attrs: {title: d.filename}}),
      statusCell(d),
      el("td", {className: "num", text: d.pages ?? "–"}),
      el("td", {className: "num", text: d.chunks ?? "–"}),
      el("td", {text: (d.groups || []).join(", ")}),
      el("td", {className: "num", text: d.version ?? ""}),
      el("td", {className: "small", text: formatDate(d.created_at)}),
      actions));
  }
  const empty = $("library-empty");
  empty.textContent = !state.documents.length ? t("noDocuments") : !shown.length ? t("noMatch", {q: query}) : "";
  empty.hidden = !empty.textContent;
  $("library-count").textContent = t("documentsCount", {n: shown.length});
  updateAskSelected();
  if (focusKey) {
    const again = document.querySelector(`[data-doc="${CSS.escape(focusKey[0])}"][data-role="${CSS.escape(focusKey[1] || "")}"]`);
    if (again) again.focus();
  }
}

function updateAskSelected() {
  const button = $("ask-selected");
  button.textContent = t("askAboutThese", {n: state.selected.size});
  button.disabled = state.selected.size === 0;
}

async function deleteDocument(d) {
  if (!window.confirm(t("confirmDelete", {name: d.filename}))) return;
  const response = await api(`/v1/documents/${encodeURIComponent(d.document_id)}`, {method: "DELETE"}).catch(() => null);
  if (!response || !response.ok) {
    libraryError(describe(response ? await problemOf(response) : NETWORK));
    return;
  }
  state.selected.delete(d.document_id);
  $("upload-status").textContent = t("deleted", {name: d.filename});
  loadDocuments();
}

function askAboutSelected() {
  state.scope = state.documents.filter((d) => state.selected.has(d.document_id))
    .map((d) => ({document_id: d.document_id, filename: d.filename}));
  showScope();
  showView("ask");
  $("question").focus();
}

function showScope() {
  $("scope").hidden = state.scope.length === 0;
  $("scope-text").textContent = t("askingWithin", {names: state.scope.map((d) => d.filename).join(", ")});
}

// --- uploading ------------------------------------------------------------------------------------------------

function fillGroups() {
  const session = state.session;
  const box = $("group-options");
  if (!session) return;
  const own = (session.groups || []).filter((g) => g !== "*");
  let options = own;
  if ((session.groups || []).includes("*")) {
    const seen = new Set(["everyone", ...own]);
    for (const d of state.documents) for (const g of d.groups || []) seen.add(g);
    options = [...seen].filter((g) => g !== "*").sort();
  }
  const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  const existing = [...box.querySelectorAll("input")].map((i) => i.value);
  if (existing.join("\n") === options.join("\n")) return;
  box.replaceChildren();
  for (const g of options) {
    const input = el("input", {attrs: {type: "checkbox", name: "groups", value: g}});
    input.checked = checked.has(g);
    box.append(el("label", {className: "group"}, input, ` ${g}`));
  }
  $("upload-groups").hidden = options.length === 0;
}

function chosenGroups() {
  return [...document.querySelectorAll("#group-options input:checked")].map((i) => i.value);
}

/** One file, one request, so that each has its own progress bar. Resolves to the parsed response or a problem. */
function uploadOne(file, groups, row) {
  return new Promise((resolve) => {
    const form = new FormData();
    form.append("files", file, file.name);
    if (groups.length) form.append("groups", groups.join(","));
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/documents");
    xhr.setRequestHeader("X-KB-Request", "1");
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) row.progress.value = event.loaded / event.total;
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300 && body) { resolve({ok: true, body}); return; }
      const retry = xhr.getResponseHeader("Retry-After");
      const rejected = body && Array.isArray(body.rejected) ? body.rejected : [];  // problem details' extra field
      const detail = rejected.length ? rejected.map((r) => r.error).join("; ") : body ? body.detail : xhr.statusText;
      resolve({ok: false, problem: {status: xhr.status, detail: String(detail || ""), retryAfter: retry && /^\d+$/.test(retry) ? Number(retry) : null}});
    });
    xhr.addEventListener("error", () => resolve({ok: false, problem: NETWORK}));
    xhr.send(form);
  });
}

async function uploadFiles(files) {
  files = [...files];
  if (!files.length) return;
  const status = $("upload-status");
  status.textContent = t("uploading");
  const groups = chosenGroups();
  const list = $("upload-list");
  const rows = files.map((file) => {
    const progress = el("progress", {attrs: {max: 1, value: 0, "aria-label": file.name}});
    const state_ = el("span", {className: "muted small upload-state", text: t("uploading")});
    const li = el("li", {attrs: {"data-file": file.name}}, el("span", {className: "filename", text: file.name, attrs: {title: file.name}}), progress, state_);
    list.prepend(li);
    return {li, progress, state: state_};
  });
  let queued = 0;
  const failures = [];
  await Promise.all(files.map(async (file, i) => {
    const row = rows[i];
    const result = await uploadOne(file, groups, row);
    if (result.ok) {
      row.progress.value = 1;
      for (const d of result.body.documents || []) {
        queued += 1;
        row.li.dataset.doc = d.document_id;
        state.uploadRows.set(d.document_id, row);
        row.state.textContent = d.duplicate ? `${statusText(d.status)} (${t("duplicate")})` : statusText(d.status);
        row.li.dataset.status = d.status;
      }
      for (const r of result.body.rejected || []) {
        failures.push(r.error.startsWith(r.filename) ? r.error : t("uploadRejected", {name: r.filename, detail: r.error}));
      }
    } else {
      row.li.dataset.status = "failed";
      row.state.textContent = describe(result.problem);
      row.state.className = "error small upload-state";
      const words = row.state.textContent;
      failures.push(words.startsWith(file.name) ? words : t("uploadRejected", {name: file.name, detail: words}));
    }
  }));
  $("files").value = "";
  const parts = [];
  if (queued) parts.push(t("queued", {n: queued}));
  if (failures.length) parts.push(queued ? failures.join(" ") : t("uploadFailed", {detail: failures.join(" ")}));
  status.textContent = parts.join(" ");
  loadDocuments();
}

function updateUploadRows() {
  for (const d of state.documents) {
    const row = state.uploadRows.get(d.document_id);
    if (!row) continue;
    row.li.dataset.status = d.status;
    row.state.textContent = statusText(d.status) + (d.status === "failed" && d.error ? `: ${d.error}` : "");
    row.state.className = (d.status === "failed" ? "error" : "muted") + " small upload-state";
  }
}

// --- views, keyboard, start -----------------------------------------------------------------------------------

function showView(name) {
  for (const view of ["ask", "library"]) {
    $(`view-${view}`).hidden = view !== name;
    $(`tab-${view}`).setAttribute("aria-selected", String(view === name));
  }
  document.body.dataset.view = name;
  // The cited passage belongs to the conversation: left open over the library it squeezed the table.
  if (name !== "ask" && !$("source-panel").hidden) closeSource();
  if (name === "library") loadDocuments();
}

function closeSidebar() {
  document.body.classList.remove("sidebar-open");
  $("menu-toggle").setAttribute("aria-expanded", "false");
}

function wire() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("key");
    const key = input.value.trim();
    input.value = "";
    if (key) signIn(key);
  });
  $("sign-out").addEventListener("click", signOut);
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("question");
    const question = input.value.trim();
    if (!question || state.controller) return;
    input.value = "";
    ask(question);
  });
  $("question").addEventListener("keydown", (event) => {
    // Enter asks; Shift+Enter is a new line; Enter that confirms an input method's composition (Chinese) is not.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
  $("stop").addEventListener("click", stop);
  $("new-conversation").addEventListener("click", newConversation);
  $("tab-ask").addEventListener("click", () => showView("ask"));
  $("tab-library").addEventListener("click", () => showView("library"));
  $("tabs").addEventListener("keydown", (event) => {
    if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
    const next = document.body.dataset.view === "ask" ? "library" : "ask";
    showView(next);
    $(`tab-${next}`).focus();
  });
  $("menu-toggle").addEventListener("click", () => {
    const open = document.body.classList.toggle("sidebar-open");
    $("menu-toggle").setAttribute("aria-expanded", String(open));
  });
  $("source-close").addEventListener("click", closeSource);
  // On a narrow screen the sidebar is a drawer over the page: a click beside it closes it.
  $("main").addEventListener("click", () => { if (document.body.classList.contains("sidebar-open")) closeSidebar(); });
  $("scope-clear").addEventListener("click", () => { state.scope = []; showScope(); $("question").focus(); });
  $("doc-search").addEventListener("input", renderDocuments);
  $("ask-selected").addEventListener("click", askAboutSelected);
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    uploadFiles($("files").files);
  });
  // Files dropped anywhere on the page are uploaded (and never opened by the browser in place of the page).
  let dragDepth = 0;
  window.addEventListener("dragenter", (event) => {
    if (!event.dataTransfer || ![...event.dataTransfer.types].includes("Files")) return;
    dragDepth += 1;
    document.body.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) document.body.classList.remove("dragging");
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    document.body.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) uploadFiles(event.dataTransfer.files);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (state.controller) { stop(); event.preventDefault(); return; }
    if (!$("tooltip").hidden) { hideTooltip(); return; }
    if (!$("source-panel").hidden) { closeSource(); return; }
    if (document.body.classList.contains("sidebar-open")) { closeSidebar(); $("menu-toggle").focus(); }
  });
  // A link opened again on an open page, or Back/Forward between links (popstate and hashchange both come for a
  // fragment navigation in some browsers, one of them in others: followLink does its work once).
  window.addEventListener("hashchange", followLink);
  window.addEventListener("popstate", followLink);
  window.addEventListener("scroll", hideTooltip, {passive: true});
}

// The test of the page's security (tests/e2e/test_web_security.py) and anyone debugging render citations as an
// answer's would be rendered: into the latest answer's source list (#citations).
window.renderCitations = (citations) => {
  const turn = state.turns[state.turns.length - 1] || newTurn("");
  turn.citations = citations;
  turn.body.replaceChildren();
  renderSources(turn);
};

translatePage();
wire();
showView("ask");
updateAskSelected();
try { localStorage.removeItem(OLD_KEY_ITEM); } catch { /* storage switched off: nothing was kept there */ }
takeKeyFromLink().then((took) => { if (!took) checkSession(); });
