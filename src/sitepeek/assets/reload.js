// sitepeek live reload client. Injected into every HTML page the server sends.
// One WebSocket per tab (never SSE: that would hold one of the browser's six
// connections per origin). CSS changes swap stylesheets in place, image changes
// refresh the images, anything else reloads the page and restores the scroll position.
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
})();
