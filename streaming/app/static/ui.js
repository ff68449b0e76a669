// The jam page's shared bits of display: the element lookup, status tiles, the message list, the notice banner and
// the model line (from /health).

export const $ = (id) => document.getElementById(id);

export function setText(id, text, tone) {
  const el = $(id);
  el.textContent = text;
  el.className = tone || "";
}

export function log(text, kind = "log") {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  $("log").prepend(item);
  while ($("log").children.length > 200) $("log").lastChild.remove();
}

export function showNotice(text) {
  $("notice").textContent = text.charAt(0).toUpperCase() + text.slice(1).replace(/\.?$/, ".");
  $("notice").hidden = false;
}

export async function loadModel() {
  try {
    const health = await (await fetch("/health")).json();
    const model = health.model || {};
    const name = (model.checkpoint || "unknown").split("/").slice(-2).join("/");
    $("model").textContent = `Model: ${name} · ${model.sample_rate / 1000} kHz · ${model.device}` +
      ` · sessions ${health.sessions}/${health.max_sessions}`;
    if (model.demo_noise) {
      $("model").textContent += " · random weights";
      showNotice("Demo checkpoint with random weights: this audio is noise, not music.");
    }
  } catch (err) {
    $("model").textContent = `Model: unavailable (${err.message})`;
  }
}
