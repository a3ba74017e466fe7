// Tidewater example site: a theme toggle and a sightings counter.
// Plain ES module, no dependencies; state is kept in localStorage.

const THEME_KEY = "tidewater:theme";
const COUNT_KEY = "tidewater:sightings";

function readStorage(key) {
  try {
    return window.localStorage.getItem(key);
  } catch {
    return null; // Storage can be disabled (private mode, file:// in some browsers).
  }
}

function writeStorage(key, value) {
  try {
    window.localStorage.setItem(key, value);
  } catch {
    // Ignore: the page still works, it just forgets on reload.
  }
}

function preferredTheme() {
  const saved = readStorage(THEME_KEY);
  if (saved === "light" || saved === "dark") {
    return saved;
  }
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  for (const button of document.querySelectorAll("[data-theme-toggle]")) {
    const dark = theme === "dark";
    button.setAttribute("aria-pressed", String(dark));
    button.textContent = dark ? "Light mode" : "Dark mode";
  }
}

function setUpThemeToggle() {
  applyTheme(preferredTheme());
  for (const button of document.querySelectorAll("[data-theme-toggle]")) {
    button.addEventListener("click", () => {
      const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
      writeStorage(THEME_KEY, next);
      applyTheme(next);
    });
  }
}

function setUpCounter() {
  const output = document.querySelector("[data-counter-value]");
  if (!output) {
    return;
  }
  let count = Number.parseInt(readStorage(COUNT_KEY) ?? "0", 10) || 0;
  const render = () => {
    output.textContent = count.toLocaleString();
    writeStorage(COUNT_KEY, String(count));
  };
  document.querySelector("[data-counter-add]")?.addEventListener("click", () => {
    count += 1;
    render();
  });
  document.querySelector("[data-counter-reset]")?.addEventListener("click", () => {
    count = 0;
    render();
  });
  render();
}

setUpThemeToggle();
setUpCounter();
