// A small Markdown renderer for answers that builds DOM nodes and never parses HTML: every piece of text from the
// model or a document becomes a text node, so `<script>`, `<img onerror>` or any other markup in an answer is shown
// as the characters it is. Supports paragraphs, line breaks, headings, lists, block quotes, fenced and inline code,
// bold, italics, http(s) links and citation markers `[n]` / `[n, m]` (handed to the caller's `citation(n)`).

const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+-]*)\s*$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^\s{0,3}>\s?/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

// Inline syntax, first match wins: code span, bold, italics, citation markers, a link, a line break.
const INLINE = new RegExp([
  "(`+)([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)",          // 1, 2: code
  "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*",               // 3: bold
  "(?<!\\w)__(?=\\S)([\\s\\S]*?\\S)__(?!\\w)",            // 4: bold (not inside snake_case words)
  "\\*(?=[^\\s*])([^*\\n]*?[^\\s*])\\*",              // 5: italics
  "\\[(\\d{1,4}(?:\\s*[,，]\\s*\\d{1,4})*)\\]",       // 6: citations
  "\\[([^\\]\\n]{1,300})\\]\\((https?://[^\\s)]{1,2000})\\)", // 7, 8: link
  "(\\n)",                                            // 9: line break
].join("|"));

function inline(text, parent, options) {
  let rest = text;
  while (rest) {
    const match = INLINE.exec(rest);
    if (!match) {
      parent.append(document.createTextNode(rest));
      return;
    }
    if (match.index > 0) parent.append(document.createTextNode(rest.slice(0, match.index)));
    rest = rest.slice(match.index + match[0].length);
    if (match[2] !== undefined) {
      const code = el("code");
      code.textContent = match[2].replace(/^ (.+) $/, "$1");
      parent.append(code);
    } else if (match[3] !== undefined || match[4] !== undefined) {
      const strong = el("strong");
      inline(match[3] ?? match[4], strong, options);
      parent.append(strong);
    } else if (match[5] !== undefined) {
      const em = el("em");
      inline(match[5], em, options);
      parent.append(em);
    } else if (match[6] !== undefined) {
      for (const n of match[6].split(/\s*[,，]\s*/).map(Number)) {
        parent.append(options.citation ? options.citation(n) : document.createTextNode(`[${n}]`));
      }
    } else if (match[7] !== undefined) {
      const link = el("a");
      link.href = match[8];  // http(s) only (the pattern): no javascript: or data: URL can get here
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      inline(match[7], link, options);
      parent.append(link);
    } else {
      parent.append(el("br"));
    }
  }
}

function blocks(lines, parent, options, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i += 1; continue; }
    let match;
    if ((match = FENCE.exec(line))) {
      const fence = match[1];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence)) body.push(lines[i++]);
      i += 1;
      const pre = el("pre");
      const code = el("code");
      code.textContent = body.join("\n");
      pre.append(code);
      parent.append(pre);
    } else if ((match = HEADING.exec(line))) {
      const heading = el(`h${Math.min(6, match[1].length + 2)}`);
      inline(match[2], heading, options);
      parent.append(heading);
      i += 1;
    } else if (RULE.test(line)) {
      parent.append(el("hr"));
      i += 1;
    } else if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].replace(QUOTE, ""));
      const quote = el("blockquote");
      if (depth < 8) blocks(quoted, quote, options, depth + 1);
      else quote.textContent = quoted.join("\n");
      parent.append(quote);
    } else if ((match = ITEM.exec(line))) {
      const ordered = /\d/.test(match[2]);
      const list = el(ordered ? "ol" : "ul");
      if (ordered && parseInt(match[2], 10) !== 1) list.start = parseInt(match[2], 10);
      const indent = match[1].length;
      while (i < lines.length) {
        const item = ITEM.exec(lines[i]);
        if (!item || /\d/.test(item[2]) !== ordered || item[1].length > indent + 1) break;
        const text = [item[3]];
        i += 1;
        // Continuation lines: indented, or plain text that starts no block
        while (i < lines.length && lines[i].trim() && !ITEM.exec(lines[i]) &&
               (/^\s{2,}/.test(lines[i]) || !isBlockStart(lines[i]))) {
          text.push(lines[i++].trim());
        }
        // A nested list: more indented items
        const nested = [];
        while (i < lines.length && (match = ITEM.exec(lines[i])) && match[1].length > indent + 1) nested.push(lines[i++]);
        const li = el("li");
        inline(text.join("\n"), li, options);
        if (nested.length && depth < 8) blocks(nested.map((l) => l.slice(indent + 2)), li, options, depth + 1);
        list.append(li);
        while (i < lines.length && !lines[i].trim() && i + 1 < lines.length && ITEM.exec(lines[i + 1])) i += 1;
      }
      parent.append(list);
    } else {
      const text = [];
      while (i < lines.length && lines[i].trim() && (text.length === 0 || !isBlockStart(lines[i]))) {
        text.push(lines[i++].trim());
      }
      const p = el("p");
      inline(text.join("\n"), p, options);
      parent.append(p);
    }
  }
}

/** `text` (Markdown) as a DocumentFragment. options.citation(n) -> Node renders a marker [n]. */
export function renderMarkdown(text, options = {}) {
  const fragment = document.createDocumentFragment();
  blocks(String(text ?? "").replace(/\r\n?/g, "\n").split("\n"), fragment, options, 0);
  return fragment;
}

/** Wraps the first occurrence of `needle` in the text of `root` (across element boundaries) in elements made by
 * `makeMark()`, one per text node it spans. Whitespace runs match each other. Returns whether it was found. */
export function markText(root, needle, makeMark, skip = () => false) {
  const wanted = needle.trim();
  if (!wanted) return false;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const nodes = [];
  let text = "";
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    nodes.push({node, start: text.length});
    text += node.data;
  }
  const escaped = wanted.split(/\s+/).map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("\\s*");
  const found = new RegExp(escaped).exec(text);
  if (!found) return false;
  const start = found.index;
  const end = start + found[0].length;
  for (const {node, start: at} of nodes) {
    const from = Math.max(start, at);
    const to = Math.min(end, at + node.data.length);
    if (from >= to || skip(node)) continue;
    let target = node;
    if (from > at) target = target.splitText(from - at);
    if (to < at + node.data.length) target.splitText(to - from);
    const mark = makeMark();
    target.replaceWith(mark);
    mark.append(target);
  }
  return true;
}
