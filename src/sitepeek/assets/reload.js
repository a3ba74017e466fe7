// sitepeek live reload client. Injected into every HTML page the server sends.
// One WebSocket per tab (never SSE: that would hold one of the browser's six
// connections per origin). CSS changes swap stylesheets in place, image changes
// refresh the images, anything else reloads the page and restores the scroll position.
// With --build / --run, a failed build or a companion that ended shows its output in an
// overlay (see overlay() below) until a good build clears it or the user dismisses it.
(() => {
  "use strict";
  if (window.__sitepeek__) return;
  const state = (window.__sitepeek__ = { reloads: 0, cssSwaps: 0, imageRefreshes: 0 });
  const SCROLL_KEY = "sitepeek:scroll:" + location.pathname + location.search;
  const IMAGE = /\.(png|jpe?g|gif|webp|avif|svg|ico|bmp)$/i;
  const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/__sitepeek__/ws";

  restoreScroll();

  let delay = 100;
  let lostConnection = false;
  connect();

  function connect() {
    let socket;
    try {
      socket = new WebSocket(wsUrl);
    } catch (_) {
      return retry();
    }
    socket.onopen = () => {
      delay = 100;
      state.connected = true;
      // The server was restarted while we waited: what it serves may have changed.
      if (lostConnection) fullReload();
    };
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (message.type === "reload") apply(message.paths || []);
      else if (message.type === "overlay" || message.type === "overlay-clear") overlay(message);
    };
    socket.onclose = () => {
      if (state.connected) lostConnection = true;
      state.connected = false;
      retry();
    };
  }

  function retry() {
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 3000);
  }

  function apply(paths) {
    if (paths.length && paths.every((p) => /\.css$/i.test(p)) && swapStylesheets(paths)) return;
    if (paths.length && paths.every((p) => IMAGE.test(p)) && refreshImages(paths)) return;
    fullReload();
  }

  function matches(url, paths) {
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(url, location.href).pathname);
    } catch (_) {
      return false;
    }
    return paths.some((p) => pathname === "/" + p || pathname.endsWith("/" + p));
  }

  function bust(url) {
    const u = new URL(url, location.href);
    u.searchParams.set("sitepeek", Date.now().toString(36));
    return u.href;
  }

  function importsChanged(sheet, paths, depth) {
    if (depth > 5) return false;
    let rules;
    try {
      rules = sheet.cssRules;
    } catch (_) {
      return false; // cross-origin sheet
    }
    for (const rule of rules) {
      if (rule instanceof CSSImportRule && rule.styleSheet) {
        if (matches(rule.href, paths) || importsChanged(rule.styleSheet, paths, depth + 1)) return true;
      }
    }
    return false;
  }

  function swapStylesheets(paths) {
    const links = [...document.querySelectorAll('link[rel~="stylesheet"][href]')];
    const changed = links.filter(
      (link) => matches(link.href, paths) || (link.sheet && importsChanged(link.sheet, paths, 0)),
    );
    if (!changed.length) return false;
    for (const link of changed) {
      // Load the new sheet next to the old one, then drop the old: no flash of
      // unstyled content.
      const fresh = link.cloneNode();
      fresh.href = bust(link.href);
      fresh.onload = fresh.onerror = () => link.remove();
      link.after(fresh);
    }
    state.cssSwaps += 1;
    return true;
  }

  function refreshImages(paths) {
    const images = [...document.images].filter((img) => matches(img.currentSrc || img.src, paths));
    if (!images.length) return false;
    for (const img of images) {
      img.removeAttribute("srcset");
      img.src = bust(img.src);
    }
    state.imageRefreshes += 1;
    return true;
  }

  function fullReload() {
    try {
      sessionStorage.setItem(SCROLL_KEY, JSON.stringify([window.scrollX, window.scrollY]));
    } catch (_) {
      // storage disabled: reload anyway
    }
    state.reloads += 1;
    location.reload();
  }

  function restoreScroll() {
    let saved;
    try {
      saved = sessionStorage.getItem(SCROLL_KEY);
      sessionStorage.removeItem(SCROLL_KEY);
    } catch (_) {
      return;
    }
    if (!saved) return;
    const [x, y] = JSON.parse(saved);
    const scroll = () => window.scrollTo(x, y);
    if (document.readyState === "complete") scroll();
    else window.addEventListener("load", scroll, { once: true });
  }
  // -- the build overlay: self-contained, in a shadow root so the page's CSS cannot
  // touch it (nor it the page). Messages: {type: "overlay", id, title, output} shows or
  // replaces one section, {type: "overlay-clear", id} removes it. Output is text: ANSI
  // colours become styled spans, everything else is set as textContent (escaped).
  function overlay(message) {
    const shown = (overlay.shown = overlay.shown || new Map());
    if (message.type === "overlay") shown.set(String(message.id), message);
    else shown.delete(String(message.id));
    state.overlays = [...shown.keys()];
    let host = document.getElementById("__sitepeek_overlay__");
    if (!shown.size || (message.type === "overlay-clear" && !host)) {
      if (host) host.remove();
      return;
    }
    if (!host) {
      host = document.createElement("div");
      host.id = "__sitepeek_overlay__";
      host.attachShadow({ mode: "open" });
      (document.body || document.documentElement).appendChild(host);
      const dismiss = () => {
        host.remove();
        document.removeEventListener("keydown", onKey, true);
      };
      const onKey = (event) => {
        if (event.key === "Escape") dismiss();
      };
      document.addEventListener("keydown", onKey, true);
      host.dismiss = dismiss;
    }
    const root = host.shadowRoot;
    root.replaceChildren();
    const style = document.createElement("style");
    style.textContent =
      ":host{all:initial}" +
      ".backdrop{position:fixed;inset:0;z-index:2147483647;background:rgba(0,0,0,.55);" +
      "display:flex;align-items:flex-start;justify-content:center;padding:4vh 2vw;" +
      "box-sizing:border-box;font:14px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}" +
      ".panel{position:relative;background:#181818;color:#e8e8e8;border-top:4px solid #e5484d;" +
      "border-radius:6px;max-width:min(1100px,100%);width:100%;max-height:92vh;overflow:auto;" +
      "box-shadow:0 10px 40px rgba(0,0,0,.5);padding:16px 20px;box-sizing:border-box}" +
      "h2{font:inherit;font-weight:bold;color:#ff6369;margin:0 2em 8px 0}" +
      "pre{margin:0 0 16px;white-space:pre-wrap;word-break:break-word;font:inherit}" +
      "button{position:absolute;top:8px;right:10px;background:none;border:0;color:#aaa;" +
      "font:20px/1 sans-serif;cursor:pointer}button:hover{color:#fff}" +
      ".hint{color:#888;font-size:12px}";
    const backdrop = document.createElement("div");
    backdrop.className = "backdrop";
    const panel = document.createElement("div");
    panel.className = "panel";
    panel.setAttribute("role", "alertdialog");
    const close = document.createElement("button");
    close.textContent = "\u00d7";
    close.title = "Dismiss (Esc)";
    close.setAttribute("aria-label", "Dismiss");
    close.onclick = () => host.dismiss();
    panel.appendChild(close);
    for (const item of shown.values()) {
      const title = document.createElement("h2");
      title.textContent = String(item.title || "");
      const pre = document.createElement("pre");
      pre.appendChild(ansiToNodes(String(item.output || "")));
      panel.append(title, pre);
    }
    const hint = document.createElement("div");
    hint.className = "hint";
    hint.textContent = "sitepeek keeps serving the last good build. Fix the error and save: this goes away.";
    panel.appendChild(hint);
    backdrop.appendChild(panel);
    root.append(style, backdrop);
  }

  // ANSI SGR colours (16, 256 and 24-bit) to spans; other escape sequences are dropped.
  function ansiToNodes(text) {
    const BASIC = ["#000", "#e5484d", "#46a758", "#f5d90a", "#3e63dd", "#ab4aba", "#12a594", "#ccc",
      "#666", "#ff6369", "#63c174", "#ffef5c", "#849dff", "#d19dff", "#0ac5b3", "#fff"];
    const palette = (n) => {
      if (n < 16) return BASIC[n];
      if (n >= 232) { const v = 8 + (n - 232) * 10; return `rgb(${v},${v},${v})`; }
      const c = n - 16, level = (x) => (x ? 55 + x * 40 : 0);
      return `rgb(${level(Math.floor(c / 36))},${level(Math.floor(c / 6) % 6)},${level(c % 6)})`;
    };
    const fragment = document.createDocumentFragment();
    let sgr = {};
    const pattern = /\x1b\[([0-9;]*)m|\x1b\[[0-9;?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]/g;
    let last = 0;
    const emit = (chunk) => {
      if (!chunk) return;
      const span = document.createElement("span");
      span.textContent = chunk;
      if (sgr.fg) span.style.color = sgr.fg;
      if (sgr.bg) span.style.backgroundColor = sgr.bg;
      if (sgr.bold) span.style.fontWeight = "bold";
      if (sgr.dim) span.style.opacity = "0.7";
      if (sgr.italic) span.style.fontStyle = "italic";
      if (sgr.underline) span.style.textDecoration = "underline";
      fragment.appendChild(span);
    };
    for (let match; (match = pattern.exec(text)); ) {
      emit(text.slice(last, match.index));
      last = pattern.lastIndex;
      if (match[1] === undefined) continue;
      const codes = match[1] === "" ? [0] : match[1].split(";").map(Number);
      for (let i = 0; i < codes.length; i++) {
        const code = codes[i];
        if (code === 0) sgr = {};
        else if (code === 1) sgr.bold = true;
        else if (code === 2) sgr.dim = true;
        else if (code === 3) sgr.italic = true;
        else if (code === 4) sgr.underline = true;
        else if (code === 22) sgr.bold = sgr.dim = false;
        else if (code === 23) sgr.italic = false;
        else if (code === 24) sgr.underline = false;
        else if (code >= 30 && code <= 37) sgr.fg = BASIC[code - 30];
        else if (code >= 90 && code <= 97) sgr.fg = BASIC[code - 82];
        else if (code >= 40 && code <= 47) sgr.bg = BASIC[code - 40];
        else if (code >= 100 && code <= 107) sgr.bg = BASIC[code - 92];
        else if (code === 39) sgr.fg = null;
        else if (code === 49) sgr.bg = null;
        else if ((code === 38 || code === 48) && codes[i + 1] === 5) {
          sgr[code === 38 ? "fg" : "bg"] = palette(codes[i + 2] & 255);
          i += 2;
        } else if ((code === 38 || code === 48) && codes[i + 1] === 2) {
          const [r, g, b] = codes.slice(i + 2, i + 5).map((v) => (v || 0) & 255);
          sgr[code === 38 ? "fg" : "bg"] = `rgb(${r},${g},${b})`;
          i += 4;
        }
      }
    }
    emit(text.slice(last));
    return fragment;
  }
})();
