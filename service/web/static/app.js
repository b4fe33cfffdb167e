// The kb web page. Served from kb's own origin under a strict Content-Security-Policy (no inline script or style).
//
// Signing in: the API key comes from the link `kb serve` prints (#key=…, a fragment, so it never reaches a server
// log) or from the paste box. The page sends it once to POST /v1/session, which answers with an HttpOnly cookie
// holding a short-lived signed session token, and then forgets it: the key is never stored where a script could
// read it (no localStorage, no sessionStorage, no cookie a script sees). Every later request is authorised by that
// cookie and carries the header X-KB-Request: 1, which kb requires of cookie-authorised POST/PUT/PATCH/DELETE.
"use strict";

const OLD_KEY_ITEM = "kb_api_key";  // where earlier versions of this page kept the key
const REQUEST_HEADER = {"X-KB-Request": "1"};

function api(path, options = {}) {
  const headers = {...REQUEST_HEADER, ...(options.headers || {})};
  return fetch(path, {...options, credentials: "same-origin", headers});
}

// --- the session ----------------------------------------------------------------------------------------------

// Each sign-in, check and sign-out starts a new generation: an answer that arrives after a newer one started
// (the check at load racing the #key= link) is ignored.
let sessionGeneration = 0;

function showSession(state, message) {
  const box = document.getElementById("key-box");
  box.dataset.state = state;
  document.getElementById("key-summary").textContent = message;
  document.getElementById("sign-out").hidden = state !== "signed-in";
  box.open = state !== "signed-in";
}

async function problemText(response) {
  // Errors are RFC 9457 problem details: show their `detail`.
  const text = await response.text();
  try {
    const detail = JSON.parse(text).detail || text;
    if (response.status === 401) showSession("signed-out", "Not signed in: " + detail);
    return detail;
  } catch {
    return text;
  }
}

async function signIn(key) {
  const generation = ++sessionGeneration;
  showSession("pending", "Signing in…");
  const response = await api("/v1/session", {method: "POST", headers: {"Authorization": `Bearer ${key}`}});
  const text = await response.text();
  if (generation !== sessionGeneration) return;
  if (!response.ok) {
    let detail = text;
    try { detail = JSON.parse(text).detail || text; } catch { /* not problem JSON */ }
    showSession("signed-out", "Not signed in: " + detail);
    return;
  }
  showSession("signed-in", `Signed in: ${JSON.parse(text).name}`);
}

async function checkSession() {
  const generation = ++sessionGeneration;
  const response = await api("/v1/session");
  const body = response.ok ? await response.json() : null;
  if (generation !== sessionGeneration) return;
  if (body) showSession("signed-in", `Signed in: ${body.name}`);
  else showSession("signed-out", "Not signed in — paste an API key");
}

async function takeKeyFromLink() {
  const key = new URLSearchParams(location.hash.slice(1)).get("key");
  if (!key) return false;
  history.replaceState(null, "", location.pathname);  // out of the address bar and the history
  // A link someone sent must not silently swap the session of a signed-in reader for the sender's key (their
  // uploads would then land in the sender's groups): replacing a session takes the reader's consent.
  const current = await api("/v1/session");
  if (current.ok) {
    const name = (await current.json()).name;
    if (!window.confirm(`This link signs this page in with another API key, replacing your session ("${name}"). Continue?`)) {
      showSession("signed-in", `Signed in: ${name}`);
      return true;
    }
  }
  await signIn(key);
  return true;
}

async function signOut() {
  const generation = ++sessionGeneration;
  await api("/v1/session", {method: "DELETE"});
  if (generation === sessionGeneration) showSession("signed-out", "Signed out — paste an API key");
}

// --- asking ---------------------------------------------------------------------------------------------------

function originalUrl(citation) {
  // The original opens in a new tab straight from kb (the session cookie authorises it). kb serves it as a
  // download, or, for a real PDF, to the browser's PDF viewer at the cited page: never as a page in kb's origin.
  const page = citation.page ? `#page=${citation.page}` : "";
  return `/v1/documents/${encodeURIComponent(citation.document_id)}/file${page}`;
}

function renderCitations(citations) {
  const list = document.getElementById("citations");
  list.replaceChildren();
  for (const c of citations) {
    const li = document.createElement("li");
    li.value = c.n;
    const a = document.createElement("a");
    a.href = originalUrl(c);
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.textContent = c.filename + (c.page ? `, page ${c.page}` : "");
    const snippet = document.createElement("div");
    snippet.className = "snippet";
    snippet.textContent = c.snippet || "";
    li.append(a, snippet);
    list.append(li);
  }
}

// The final answer replaces the streamed tokens. Sentences no cited source supports are marked as such (text nodes
// only: the answer is never parsed as HTML); quoted evidence and "no information" say what they are.
function renderAnswer(answer, done) {
  answer.replaceChildren();
  let rest = done.answer;
  for (const sentence of done.unsupported || []) {
    const at = sentence ? rest.indexOf(sentence) : -1;
    if (at < 0) continue;
    answer.append(document.createTextNode(rest.slice(0, at)));
    const mark = document.createElement("mark");
    mark.className = "unsupported";
    mark.title = "Not supported by the cited sources";
    mark.textContent = sentence;
    answer.append(mark);
    rest = rest.slice(at + sentence.length);
  }
  answer.append(document.createTextNode(rest));
  const note = document.getElementById("answer-note");
  note.textContent = done.mode === "extract" ? "Quoted from the sources." :
    (done.unsupported || []).length ? "Marked sentences are not supported by the cited sources." : "";
}

async function ask(event) {
  event.preventDefault();
  const question = document.getElementById("question").value.trim();
  if (!question) return;
  const answer = document.getElementById("answer");
  answer.textContent = "";
  document.getElementById("answer-note").textContent = "";
  document.getElementById("citations").replaceChildren();
  const response = await api("/v1/ask", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({question, stream: true}),
  });
  if (!response.ok) { answer.textContent = `Error ${response.status}: ${await problemText(response)}`; return; }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const raw = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      let name = "message", data = "";
      for (const line of raw.split(/\r?\n/)) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      if (!data) continue;
      const payload = JSON.parse(data);
      if (name === "token") answer.textContent += payload.text;
      else if (name === "citations") renderCitations(payload.citations);
      else if (name === "done") renderAnswer(answer, payload);
    }
  }
}

// --- uploading ------------------------------------------------------------------------------------------------

async function upload(event) {
  event.preventDefault();
  const files = document.getElementById("files").files;
  if (!files.length) return;
  const body = new FormData();
  for (const f of files) body.append("files", f);
  const status = document.getElementById("upload-status");
  status.textContent = "Uploading…";
  const response = await api("/v1/documents", {method: "POST", body});
  if (!response.ok) { status.textContent = `Upload failed: ${await problemText(response)}`; return; }
  const result = await response.json();
  status.textContent = `Queued ${result.documents.length} document(s); they become searchable once ready.`;
}

// --- start ----------------------------------------------------------------------------------------------------

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key");
  const key = input.value.trim();
  input.value = "";
  if (key) signIn(key);
});
document.getElementById("sign-out").addEventListener("click", signOut);
document.getElementById("ask-form").addEventListener("submit", ask);
document.getElementById("upload-form").addEventListener("submit", upload);
window.addEventListener("hashchange", takeKeyFromLink);  // the link opened again on an open page

try { localStorage.removeItem(OLD_KEY_ITEM); } catch { /* storage switched off: nothing was kept there */ }
takeKeyFromLink().then((took) => { if (!took) checkSession(); });
