// sitepeek live reload client. Injected into every HTML page the server sends.
// One WebSocket per tab (never SSE: that would hold one of the browser's six
// connections per origin). The tab tells the server which URLs it loaded (its page and
// the resources the Performance API lists); for each build the server says what this tab
// is to do: reload (keeping the scroll position), swap the changed stylesheets in place,
// refresh the changed images, or nothing. Every page knows the site version it shows: a
// tab that (re)connects behind the server's version reloads once.
// With --build / --run, a failed build or a companion that ended shows its output in an
// overlay (see overlay() below) until a good build clears it or the user dismisses it.
(() => {
  "use strict";
  if (window.__sitepeek__) return;
  const state = (window.__sitepeek__ = {
    reloads: 0,
    cssSwaps: 0,
    imageRefreshes: 0,
    connected: false,
    site: null, // the site version this document shows, once the server said it
    reported: 0, // how many URLs this tab reported (its page and resources)
    noted: 0, // how many of them the server acknowledged
  });
  const SCROLL_KEY = "sitepeek:scroll:" + location.pathname + location.search;
  const SITE_KEY = "sitepeek:site"; // what the previous document in this tab knew
  const IMAGE = /\.(png|jpe?g|gif|webp|avif|svg|ico|bmp)$/i;
  const CLOCK_SLACK = 2; // ms: Date.now() is whole milliseconds
  const REPORT_BYTES = 16 * 1024; // of URLs per message (the server caps one at 64 KiB)
  const wsUrl = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/__sitepeek__/ws";
  const navigation = navigationEntry();

  restoreScroll();

  let delay = 100;
  let socket = null;
  let openedAt = 0; // when the current socket was created (Date.now())
  let known = null; // {server, site} this document was told
  let dirty = false; // loaded while a build was in flight: reload when it ends
  let reported = new Set();
  let reportTimer = 0;
  watchResources();
  connect();

  function connect() {
    try {
      openedAt = Date.now();
      socket = new WebSocket(wsUrl);
    } catch (_) {
      socket = null;
      return retry();
    }
    socket.onopen = () => {
      delay = 100;
      state.connected = true;
    };
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      receive(message);
    };
    socket.onclose = () => {
      state.connected = false;
      socket = null;
      retry();
    };
  }

  function retry() {
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 3000);
  }

  // One case per message type: a new kind of message is one more case and a function.
  function receive(message) {
    switch (message.type) {
      case "hello":
        return onHello(message);
      case "reload":
        return onBuild(message);
      case "noted":
        state.noted = message.count;
        return;
      case "overlay":
      case "overlay-clear":
        return overlay(message);
    }
  }

  function onHello(hello) {
    const first = known === null;
    // A worker process that has not yet handled a build this tab was already told of
    // (the supervisor tells its workers one after another): its news is older than ours.
    const told = first ? stored() : known;
    const lagging = told !== null && told.server === hello.server && told.site > hello.site;
    const behind = first
      ? behindOnLoad(hello, Date.now())
      : hello.server !== known.server || hello.site > known.site; // restarted, or missed a build
    if (lagging) remember(told.server, told.site);
    else remember(hello.server, hello.site);
    if (behind) return fullReload();
    // This page may be half of a build (unless the build in flight is one it was told of).
    if (first && hello.building && !lagging) dirty = true;
    reported = new Set(); // a new socket: the server knows nothing of this tab yet
    report();
  }

  // Is the page this document shows older than the site's latest build? The previous
  // document of this tab knew a version; a new tab compares when its page was served
  // with when that build ended, in the server's clock. The hello was sent between this
  // socket's creation and its arrival: when that agrees with both clocks being the same
  // (the usual localhost case) they are taken as one; otherwise the offset is the one
  // that makes the page as new as it can be (a page served after the build never looks
  // older, at worst a build that ended while the page loaded is missed).
  function behindOnLoad(hello, arrived) {
    const before = stored();
    if (before && before.server === hello.server) return hello.site > before.site;
    if (!navigation || !hello.ended || !performance.timeOrigin) return false;
    const latest = hello.now - openedAt; // the offset if the hello was sent at once
    const earliest = hello.now - arrived; // ... if it arrived at once
    const offset = earliest <= CLOCK_SLACK && latest >= -CLOCK_SLACK ? 0 : latest;
    return performance.timeOrigin + navigation.responseStart + offset < hello.ended;
  }

  function onBuild(message) {
    // Told already: a worker behind the one that told this tab (or its previous page).
    if (known && typeof known.site === "number" && message.site <= known.site) return;
    remember(known ? known.server : null, message.site);
    if (dirty) {
      dirty = false;
      return fullReload();
    }
    const files = message.files || [];
    switch (message.action) {
      case "none":
        return;
      case "css":
        if (swapStylesheets(files)) return;
        break;
      case "images":
        if (refreshImages(files)) return;
        break;
    }
    fullReload();
  }

  function remember(server, site) {
    known = { server, site };
    state.site = site;
    try {
      sessionStorage.setItem(SITE_KEY, JSON.stringify(known));
    } catch (_) {
      // storage disabled: this document still knows
    }
  }

  function stored() {
    try {
      const value = JSON.parse(sessionStorage.getItem(SITE_KEY) || "null");
      return value && typeof value.site === "number" ? value : null;
    } catch (_) {
      return null;
    }
  }

  // -- what this tab loaded -----------------------------------------------------------
  function navigationEntry() {
    try {
      return performance.getEntriesByType("navigation")[0] || null;
    } catch (_) {
      return null; // no Performance API: the server reloads this tab on every build
    }
  }

  function watchResources() {
    if (!navigation || typeof PerformanceObserver !== "function") return;
    try {
      performance.setResourceTimingBufferSize(5000);
      new PerformanceObserver(() => {
        clearTimeout(reportTimer);
        reportTimer = setTimeout(report, 50);
      }).observe({ type: "resource", buffered: true });
    } catch (_) {
      // an older API: the first report still lists what loaded so far
    }
  }

  function localPath(url) {
    try {
      const u = new URL(url, location.href);
      if (u.origin !== location.origin || u.pathname.startsWith("/__sitepeek__/")) return null;
      return decodeURIComponent(u.pathname);
    } catch (_) {
      return null;
    }
  }

  function report() {
    if (!navigation || !socket || socket.readyState !== WebSocket.OPEN) return;
    const fresh = [];
    for (const entry of performance.getEntriesByType("resource")) {
      const path = localPath(entry.name);
      if (path !== null && !reported.has(path)) {
        reported.add(path);
        fresh.push(path);
      }
    }
    const page = localPath(navigation.name) || location.pathname;
    const status = navigation.responseStatus || 0;
    // In messages of at most REPORT_BYTES of URLs (the server takes up to 64 KiB).
    let urls = [];
    let size = 0;
    for (const path of fresh) {
      if (urls.length && size + path.length > REPORT_BYTES) {
        socket.send(JSON.stringify({ type: "loaded", page, status, urls }));
        urls = [];
        size = 0;
      }
      if (path.length <= REPORT_BYTES) {
        urls.push(path);
        size += path.length + 8;
      }
    }
    socket.send(JSON.stringify({ type: "loaded", page, status, urls }));
    state.reported = reported.size + 1;
  }

  // -- applying a build ---------------------------------------------------------------
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
