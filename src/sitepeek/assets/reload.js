// sitepeek live reload client. Injected into every HTML page the server sends.
// One WebSocket per tab (never SSE: that would hold one of the browser's six
// connections per origin). The tab tells the server which URLs it loaded (its page and
// the resources the Performance API lists); for each build the server says what this tab
// is to do: reload (keeping the scroll position), swap the changed stylesheets in place,
// refresh the changed images, or nothing. Every page knows the site version it shows: a
// tab that (re)connects behind the server's version reloads once.
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
    }
  }

  function onHello(hello) {
    const first = known === null;
    const behind = first
      ? behindOnLoad(hello, Date.now())
      : hello.server !== known.server || hello.site > known.site; // restarted, or missed a build
    remember(hello.server, hello.site);
    if (behind) return fullReload();
    if (first && hello.building) dirty = true; // this page may be half of a build
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
})();
