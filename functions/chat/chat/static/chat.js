// chat-stream's page: plain JavaScript served as it is (no framework, no build step).
// The model's text is untrusted: it reaches the page only as text nodes, never as HTML.

const KEY_STORAGE = "chat-stream.key"; // sessionStorage only: gone when the tab closes
const CONVERSATION_STORAGE = "chat-stream.conversation";

// ---------------------------------------------------------------- Server-Sent Events

/**
 * An event-stream parser following the HTML standard: lines end at CR, LF or CRLF (also
 * split across chunks), one space after "data:" is dropped, several data lines join with
 * "\n", comment lines (":") are ignored, an event is dispatched at a blank line, and an
 * unfinished event at the end of the stream is dropped. Returns feed(text).
 */
export function createSSEParser(onEvent) {
  let buffer = "";
  let data = [];
  let type = "";
  let id = "";
  let afterCR = false;

  function line(text) {
    if (text === "") {
      if (data.length) onEvent({ type: type || "message", data: data.join("\n"), id });
      data = [];
      type = "";
      return;
    }
    if (text[0] === ":") return;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") type = value;
    else if (field === "id" && !value.includes("\0")) id = value;
  }

  return function feed(chunk) {
    buffer += chunk;
    let start = 0;
    for (let i = 0; i < buffer.length; i++) {
      const code = buffer.charCodeAt(i);
      if (code === 10 && afterCR) {
        afterCR = false;
        start = i + 1;
        continue;
      }
      afterCR = false;
      if (code === 10 || code === 13) {
        line(buffer.slice(start, i));
        start = i + 1;
        afterCR = code === 13;
      }
    }
    buffer = buffer.slice(start);
  };
}

/** Read a fetch response's body as it arrives; onEvent per event, onChunk after each read. */
async function readEvents(response, onEvent, onChunk) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const feed = createSSEParser(onEvent);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    feed(decoder.decode(value, { stream: true }));
    onChunk();
  }
  feed(decoder.decode());
}

// ---------------------------------------------------------------- rendering model text

const INLINE = /(`[^`\n]+`|\*\*[^*\n]+\*\*)/;

function inline(parent, text) {
  for (const part of text.split(INLINE)) {
    if (!part) continue;
    if (part.length > 2 && part[0] === "`" && part.endsWith("`")) {
      parent.append(element("code", part.slice(1, -1)));
    } else if (part.length > 4 && part.startsWith("**") && part.endsWith("**")) {
      parent.append(element("strong", part.slice(2, -2)));
    } else {
      parent.append(part);
    }
  }
}

function element(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * Paragraphs, lists, headings and fenced code blocks, built from DOM nodes and text
 * nodes only: whatever the model writes ("<script>", "onerror=") is shown, never run.
 */
export function renderText(container, text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let paragraph = null;
  let list = null;
  const close = () => {
    paragraph = null;
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i];
    const fence = /^\s*(```+|~~~+)\s*([\w+#.-]*)/.exec(raw);
    if (fence) {
      close();
      const body = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
      const pre = element("pre");
      const code = element("code", body.join("\n"));
      if (fence[2]) pre.dataset.language = fence[2];
      pre.append(code);
      out.append(pre);
      continue;
    }
    if (!raw.trim()) {
      close();
      continue;
    }
    const item = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(raw);
    if (item) {
      const tag = /\d/.test(item[1]) ? "ol" : "ul";
      if (!list || list.tagName.toLowerCase() !== tag) {
        list = element(tag);
        out.append(list);
      }
      paragraph = null;
      const li = element("li");
      inline(li, item[2]);
      list.append(li);
      continue;
    }
    const heading = /^#{1,6}\s+(.*)$/.exec(raw);
    if (heading) {
      close();
      const p = element("p");
      const strong = element("strong");
      inline(strong, heading[1]);
      p.append(strong);
      out.append(p);
      continue;
    }
    list = null;
    if (paragraph) {
      paragraph.append("\n");
    } else {
      paragraph = element("p");
      out.append(paragraph);
    }
    inline(paragraph, raw);
  }
  container.replaceChildren(out);
}

// ---------------------------------------------------------------- the page

const $ = (id) => document.getElementById(id);
const transcript = $("transcript");
const input = $("message");
const form = $("composer");
const sendButton = $("send");
const stopButton = $("stop");
const statusRegion = $("status");
const empty = $("empty");
const sidebar = $("sidebar");
const list = $("conversation-list");
const moreButton = $("more");
const listToggle = $("toggle-list");
const keyDialog = $("key-dialog");
const keyInput = $("key");

/**
 * Two ways to keep a conversation, chosen by what the service offers. Stored: the service
 * keeps conversations (GET api/conversations answers); the current one's id is in the URL
 * fragment, so a reload or the back button reopens it. Stateless (conversations off): the
 * turns are kept in sessionStorage and sent as `history` with each message.
 */
const state = {
  stored: false,
  id: null,
  messages: [],
  busy: null,
  problem: null,
  afterKey: null,
  cursor: null,
};

function loadStateless() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(CONVERSATION_STORAGE) || "null");
    if (!saved || !Array.isArray(saved.messages)) return [];
    return saved.messages
      .filter((m) => m && typeof m.content === "string" && (m.role === "user" || m.role === "assistant"))
      .map((m) => ({ role: m.role, content: m.content, status: m.status === "streaming" ? "interrupted" : m.status }));
  } catch {
    return [];
  }
}

function saveConversation() {
  if (state.stored) return;
  const messages = state.messages.map(({ role, content, status }) => ({ role, content, status }));
  sessionStorage.setItem(CONVERSATION_STORAGE, JSON.stringify({ messages }));
}

function announce(text) {
  statusRegion.textContent = text;
}

const ENDINGS = {
  stopped: "Stopped.",
  interrupted: "Interrupted: the page was reloaded before this answer finished.",
  error: "This answer ended early because of an error.",
  timeout: "This answer ended early: the model went silent.",
  disconnected: "This answer ended early: the connection closed.",
  deadline: "This answer ended early: it ran out of time.",
};

/** One transcript entry; returns its node and an updater. */
function addTurn(message) {
  const li = element("li");
  li.className = `turn ${message.role}`;
  const who = element("span", message.role === "user" ? "You: " : "Assistant: ");
  who.className = "who";
  const body = element("div");
  li.append(who, body);
  transcript.append(li);
  empty.hidden = true;
  const view = {
    node: li,
    update() {
      if (message.role === "user") body.textContent = message.content;
      else {
        body.className = "answer";
        renderText(body, message.content);
      }
      li.classList.toggle("pending", message.status === "streaming");
      li.setAttribute("aria-busy", String(message.status === "streaming"));
      li.querySelector(".mark")?.remove();
      const ending = message.role === "assistant" && !message.explained ? ENDINGS[message.status] : undefined;
      if (ending) {
        const mark = element("span", ending);
        mark.className = "mark";
        li.append(mark);
      }
    },
  };
  view.update();
  return view;
}

function renderConversation() {
  transcript.replaceChildren();
  for (const message of state.messages) addTurn(message);
  empty.hidden = state.messages.length > 0;
}

function scrollToEnd() {
  const main = $("main");
  main.scrollTop = main.scrollHeight;
}

/** A problem shown in place (below the conversation, or inside a turn), in words, with a Retry button. */
function showProblem(text, retry, turn = null) {
  clearProblem();
  const box = element("div");
  box.className = "problem";
  box.setAttribute("role", "alert");
  box.append(element("span", text));
  if (retry) {
    const button = element("button", "Retry");
    button.type = "button";
    button.addEventListener("click", () => {
      clearProblem();
      retry();
    });
    box.append(button);
  }
  if (turn) turn.append(box);
  else transcript.after(box);
  state.problem = box;
  scrollToEnd();
}

function clearProblem() {
  state.problem?.remove();
  state.problem = null;
}

function setBusy(busy) {
  sendButton.disabled = busy;
  stopButton.hidden = !busy;
  sendButton.hidden = busy;
}

function autosize() {
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight + 2, 192)}px`;
}

const LOST = "The connection to the service was lost. Check your network, then retry.";
const RESUME_ATTEMPTS = 8; // a resumable answer is reconnected to this many times, RESUME_PAUSE_MS apart and more
const RESUME_PAUSE_MS = 500;

/** What a refused request means, in words; the server's own message is kept. */
function refusalText(status, said, retryAfter) {
  const detail = said ? ` (${said})` : "";
  if (status === 400) return `The service could not take this message: ${said || "it was not accepted."}`;
  if (status === 403) {
    return (
      "This deployment accepts only requests signed with AWS credentials (AuthMode=AWS_IAM), and a " +
      "browser cannot sign requests. Use curl --aws-sigv4 or an SDK instead, or deploy with AuthMode=TOKEN " +
      "to chat from this page."
    );
  }
  if (status === 404) return `Not found${detail}.`;
  if (status === 409) return `An answer is already being written in this conversation: wait for it or stop it, then retry${detail}.`;
  if (status === 413) return `Your message is too long for the service${detail}. Shorten it and send it again.`;
  if (status === 429) {
    const wait = Number.parseInt(retryAfter || "", 10);
    if (Number.isFinite(wait)) return `Too many requests right now: try again in ${wait} s${detail}.`;
    // No Retry-After: the service's reason says whether waiting helps (a request bigger than a budget never fits).
    return said || "Too many requests right now: try again in a moment.";
  }
  if (status >= 500) return `The service had a problem (HTTP ${status})${detail}. Try again.`;
  return `The request was refused (HTTP ${status})${detail}.`;
}

/** fetch() on the service with the tab's key, if any; rejects only when the network fails. */
function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const headers = { ...(options.headers || {}), ...(key ? { authorization: `Bearer ${key}` } : {}) };
  return fetch(path, { cache: "no-store", ...options, headers });
}

async function errorOf(response) {
  const body = await response.json().catch(() => null);
  return body && typeof body.error === "string" ? body.error : "";
}

function askForKey(reason, then) {
  $("key-reason").textContent = reason;
  keyInput.value = "";
  state.afterKey = then;
  if (!keyDialog.open) keyDialog.showModal();
  keyInput.focus();
}

/** A refused request: 401 asks for a key then `retry`s; anything else is explained, with Retry. */
async function refused(response, retry) {
  const said = await errorOf(response);
  if (response.status === 401) {
    const hadKey = sessionStorage.getItem(KEY_STORAGE) !== null;
    sessionStorage.removeItem(KEY_STORAGE);
    const reason = hadKey
      ? "That key was not accepted. Enter a valid API key: it is kept for this browser tab only."
      : "This service needs an API key. It is kept for this browser tab only and sent with each message.";
    showProblem(`${said || "An API key is needed."} Enter a key to continue.`, retry);
    askForKey(reason, retry);
    return;
  }
  showProblem(refusalText(response.status, said, response.headers.get("retry-after")), retry);
  announce(state.problem.textContent);
}

// ---------------------------------------------------------------- conversations (stored)

function idFromHash() {
  let id;
  try {
    id = decodeURIComponent(location.hash.slice(1));
  } catch {
    return null; // a malformed fragment (#%E0) names no conversation
  }
  return /^[\w-]{1,128}$/.test(id) ? id : null;
}

function setCurrent(id) {
  state.id = id;
  history.replaceState(null, "", id ? `#${id}` : location.pathname + location.search);
  for (const link of list.querySelectorAll("a")) {
    if (link.dataset.id === id) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function listItem(conversation) {
  const li = element("li");
  const link = element("a", conversation.title || "Untitled");
  link.href = `#${encodeURIComponent(conversation.id)}`;
  link.dataset.id = conversation.id;
  if (conversation.id === state.id) link.setAttribute("aria-current", "page");
  const remove = element("button", "Delete");
  remove.type = "button";
  remove.className = "delete secondary";
  remove.setAttribute("aria-label", `Delete ${link.textContent}`);
  remove.addEventListener("click", () => {
    // Two steps, so one stray click loses nothing.
    if (remove.dataset.armed) {
      deleteConversation(conversation.id, li);
      return;
    }
    remove.dataset.armed = "1";
    remove.textContent = "Confirm";
    remove.setAttribute("aria-label", `Confirm: delete ${link.textContent}`);
    setTimeout(() => {
      delete remove.dataset.armed;
      remove.textContent = "Delete";
      remove.setAttribute("aria-label", `Delete ${link.textContent}`);
    }, 5000);
  });
  li.append(link, remove);
  return li;
}

function showList(page, more = false) {
  if (!more) list.replaceChildren();
  for (const conversation of page.conversations) list.append(listItem(conversation));
  state.cursor = page.next_cursor;
  moreButton.hidden = !state.cursor;
}

/** The caller's conversations, newest first; `more` appends the next page. */
async function loadList(more = false) {
  const query = more && state.cursor ? `&cursor=${encodeURIComponent(state.cursor)}` : "";
  const response = await api(`api/conversations?limit=30${query}`);
  if (response.ok) showList(await response.json(), more);
  return response;
}

/** The first page of the list when the service put it in the page (it knew the caller), used once; else null. */
function listInPage() {
  const block = document.getElementById("conversations");
  if (!block) return null;
  block.remove();
  try {
    return JSON.parse(block.textContent);
  } catch {
    return null;
  }
}

async function openConversation(id) {
  stop();
  finish();
  clearProblem();
  let response;
  try {
    response = await api(`api/conversations/${encodeURIComponent(id)}`);
  } catch {
    showProblem(LOST, () => openConversation(id));
    return;
  }
  if (response.status === 404) {
    setCurrent(null);
    state.messages = [];
    renderConversation();
    showProblem("That conversation no longer exists: it was deleted or has expired.");
    return;
  }
  if (!response.ok) {
    await refused(response, () => openConversation(id));
    return;
  }
  const conversation = await response.json();
  state.messages = conversation.messages
    .filter((m) => m.role === "user" || m.role === "assistant")
    .map(({ role, content, status }) => ({ role, content, status }));
  setCurrent(id);
  renderConversation();
  document.title = `${conversation.title} · chat-stream`;
  announce(`Opened ${conversation.title}.`);
  closeListOnNarrowScreens();
  scrollToEnd();
}

async function deleteConversation(id, item) {
  let response;
  try {
    response = await api(`api/conversations/${encodeURIComponent(id)}`, { method: "DELETE" });
  } catch {
    showProblem(LOST, () => deleteConversation(id, item));
    return;
  }
  if (!response.ok && response.status !== 404) {
    await refused(response, () => deleteConversation(id, item));
    return;
  }
  item.remove();
  announce("Conversation deleted.");
  if (state.id === id) newChat();
}

function closeListOnNarrowScreens() {
  sidebar.classList.remove("open");
  listToggle.setAttribute("aria-expanded", "false");
}

// ---------------------------------------------------------------- sending

/** Send `text` as the next user turn and stream the answer into the transcript. */
async function send(text) {
  if (state.busy || !text.trim()) return;
  clearProblem();
  const user = { role: "user", content: text, status: "complete" };
  const answer = { role: "assistant", content: "", status: "streaming" };
  let body;
  if (!state.stored) {
    const history = state.messages.filter((m) => m.content).map(({ role, content }) => ({ role, content }));
    body = history.length ? { message: text, history } : { message: text };
  } else {
    // Resumable: if the connection drops, the service keeps answering and the page picks the answer up again.
    body = state.id ? { message: text, conversation_id: state.id } : { message: text, store: true };
    body.resumable = true;
  }
  const userView = addTurn(user);
  const answerView = addTurn(answer);
  scrollToEnd();
  const busy = { controller: new AbortController(), stopped: false, id: state.id, stored: state.stored };
  state.busy = busy;
  // New chat or another conversation detaches this request: from then on it changes nothing on screen or in the URL.
  const current = () => state.busy === busy;
  setBusy(true);
  announce("Sending your message.");
  const removePending = () => {
    userView.node.remove();
    answerView.node.remove();
    empty.hidden = state.messages.length > 0;
  };

  let response;
  try {
    response = await api("api/chat/stream", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal: busy.controller.signal,
    });
  } catch {
    if (!current()) return;
    removePending();
    finish();
    if (!busy.stopped) showProblem(LOST, () => send(text));
    return;
  }
  const started = busy.stored && !busy.id;
  busy.id = response.headers.get("x-conversation-id") || busy.id;
  if (started && busy.stopped && response.ok) halt(busy); // stopped before the service named the conversation
  if (!current()) return;
  if (!response.ok || !(response.headers.get("content-type") || "").startsWith("text/event-stream")) {
    removePending();
    finish();
    // A stored request may be refused after the service kept the user's turn (it is durable before
    // the model is called): show the conversation as the service has it. The text stays in the box.
    const kept = state.stored && response.headers.get("x-conversation-id");
    if (kept) {
      await openConversation(kept);
      loadList().catch(() => {});
    }
    await refused(response, () => send(text));
    return;
  }

  // Accepted: from here the turn belongs to the conversation, and the typed text has been sent.
  if (started && busy.id) setCurrent(busy.id);
  state.messages.push(user, answer);
  saveConversation();
  if (input.value === text) {
    input.value = "";
    autosize();
  }
  announce("The assistant is answering.");
  let ending = null; // stays null when the body ends with neither [DONE] nor an error event
  let lastId = "";
  let lost = false;
  const onEvent = (event) => {
    if (ending) return;
    lastId = event.id || lastId;
    if (event.type === "error" && busy.stopped) ending = { stopped: true };
    else if (event.type === "error") ending = { problem: `The answer ended early: ${event.data}` };
    else if (event.type === "message" && event.data === "[DONE]") ending = { done: true };
    else if (event.type === "message") answer.content += event.data;
  };
  const onChunk = () => {
    answerView.update();
    saveConversation();
    scrollToEnd();
  };
  try {
    await readEvents(response, onEvent, onChunk);
  } catch {
    lost = true;
  }
  // A dropped connection: the service kept answering; pick the answer up after the last event shown.
  for (let attempt = 0; !ending && !busy.stopped && lastId && busy.id && attempt < RESUME_ATTEMPTS; attempt++) {
    announce("Connection lost; reconnecting.");
    await new Promise((resolve) => setTimeout(resolve, RESUME_PAUSE_MS * attempt));
    try {
      const again = await api(`api/conversations/${encodeURIComponent(busy.id)}/stream`, {
        headers: { accept: "text/event-stream", "last-event-id": lastId },
        signal: busy.controller.signal,
      });
      if (!again.ok || again.status === 204) break;
      lost = false;
      await readEvents(again, onEvent, onChunk);
    } catch {
      lost = true;
    }
  }
  if (!current()) return;
  if (!ending && lost) ending = busy.stopped ? { stopped: true } : { problem: LOST };
  if (!ending) ending = busy.stopped ? { stopped: true } : { problem: "The answer was cut off: the connection closed before it finished." };
  answer.status = ending.done ? "complete" : ending.stopped ? "stopped" : "error";
  answer.explained = Boolean(ending.problem); // its problem box says why, with a Retry
  answerView.update();
  saveConversation();
  finish();
  if (state.stored) loadList().catch(() => {});
  if (ending.problem) {
    const retry = () => {
      if (!state.stored) {
        // Stateless: the failed turn is dropped and sent again. Stored: the service keeps it, so a new turn follows.
        state.messages.splice(state.messages.indexOf(user));
        saveConversation();
        renderConversation();
      }
      send(text);
    };
    showProblem(ending.problem, retry, answerView.node);
    announce(`${answer.content} ${ending.problem}`);
  } else {
    announce(ending.stopped ? `Stopped. ${answer.content}` : answer.content);
  }
}

function finish() {
  state.busy = null;
  setBusy(false);
}

/**
 * Stop the answer. A stored conversation is also stopped through the service, which ends the
 * stream itself (on Lambda a closed connection is not noticed); the request is aborted when the
 * service has nothing to stop, cannot be asked, or takes more than 3 s. A new stored conversation
 * has no id until the model answers: aborting would leave its resumable answer running unseen,
 * so send() stops it when the id arrives.
 */
function stop() {
  const busy = state.busy;
  if (!busy || busy.stopped) return;
  busy.stopped = true;
  announce("Stopping.");
  if (busy.id || !busy.stored) halt(busy);
}

function halt(busy) {
  if (!busy.id) {
    busy.controller.abort();
    return;
  }
  const abort = () => busy.controller.abort();
  const timer = setTimeout(abort, 3000);
  api(`api/conversations/${encodeURIComponent(busy.id)}/stop`, { method: "POST" })
    .then((response) => {
      if (response.status !== 202) {
        clearTimeout(timer);
        abort();
      }
    })
    .catch(() => {
      clearTimeout(timer);
      abort();
    });
}

function newChat() {
  stop();
  finish();
  clearProblem();
  state.messages = [];
  if (state.stored) setCurrent(null);
  saveConversation();
  renderConversation();
  document.title = "chat-stream";
  closeListOnNarrowScreens();
  input.focus();
}

// ---------------------------------------------------------------- start

const conversationsOn = () => document.documentElement.dataset.conversations === "on";

/** Stored conversations when the service keeps them (it says so in the page it serves), else this tab keeps one; then `then`. */
async function start(then = null) {
  if (!conversationsOn()) {
    state.messages = loadStateless();
    renderConversation();
    return;
  }
  const embedded = listInPage();
  if (embedded) {
    showList(embedded);
  } else {
    let response;
    try {
      response = await loadList();
    } catch {
      showProblem(LOST, () => start(then));
      return;
    }
    if (!response.ok) {
      await refused(response, () => start(then));
      return;
    }
  }
  state.stored = true;
  sidebar.hidden = false;
  listToggle.hidden = false;
  const id = idFromHash();
  if (id) await openConversation(id);
  then?.();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value;
  // Conversations are on but never loaded (the key dialog was cancelled): load them first, or the message goes unsaved.
  ready.then(() => (state.stored || !conversationsOn() ? send(text) : start(() => send(text))));
});
input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!state.busy) form.requestSubmit();
  } else if (event.key === "Escape" && state.busy) {
    stop();
  }
});
input.addEventListener("input", autosize);
stopButton.addEventListener("click", () => {
  stop();
  input.focus();
});
$("new-chat").addEventListener("click", newChat);
moreButton.addEventListener("click", () => loadList(true).catch(() => showProblem(LOST)));
listToggle.addEventListener("click", () => {
  const open = sidebar.classList.toggle("open");
  listToggle.setAttribute("aria-expanded", String(open));
});
window.addEventListener("hashchange", () => {
  if (!state.stored) return;
  const id = idFromHash();
  if (id && id !== state.id) openConversation(id);
  else if (!id && state.id) newChat();
});
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return;
  // A header carries only these characters: any other (a pasted zero-width space) failed every request as "connection lost".
  if (!/^[\x21-\x7e]+$/.test(key)) {
    $("key-reason").textContent = "That is not an API key: it has spaces or characters outside plain ASCII. Paste the key again.";
    keyInput.focus();
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  keyDialog.close();
  const then = state.afterKey;
  state.afterKey = null;
  clearProblem();
  then?.();
});
$("key-cancel").addEventListener("click", () => keyDialog.close());

input.focus();
// A start that failed still lets messages go (else every Send would do nothing, silently).
const ready = start().catch((error) => console.error(error));
