// The jam page's prompts, one knob each, as Google's PromptDJ MIDI has them: a weight from 0 to 2 (a knob dragged up
// or down, the wheel, the arrow keys, or a MIDI control: weight = CC value / 127 x 2), a text the player can rename,
// and add / remove. The prompts with weight above 0 are the session's styles and their weights its style_weights
// (the server normalises the blend); the list is kept in localStorage.

import {knob} from "./knob.js";

const STORE = "jam.prompts";
export const MAX_WEIGHT = 2;
const DEFAULTS = [["jazz", 1], ["hiphop", 0.8], ["ambient", 0], ["funk", 0]];

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "null");
    if (Array.isArray(saved) && saved.every((p) => typeof p.text === "string" && Number.isFinite(p.weight))) {
      return saved.map((p) => ({id: String(p.id), text: p.text, weight: p.weight}));
    }
  } catch (err) { /* storage disabled or corrupt: the defaults */ }
  return DEFAULTS.map(([text, weight], i) => ({id: `p${i}`, text, weight}));
}

/** A prompt's text as the protocol can carry it: styles are comma-separated, so a comma becomes a space. */
function clean(text) {
  return text.replace(/,/g, " ").replace(/\s+/g, " ").trim();
}

export class Prompts {
  /** `midi` binds each knob; `changed()` is called whenever a weight or a text changes. */
  constructor(midi, changed) {
    this.midi = midi;
    this.changed = changed;
    this.list = document.getElementById("prompts");
    this.prompts = load();
    this.knobs = new Map();
    this.prompts.forEach((prompt) => this.render(prompt));
    document.getElementById("add-prompt").addEventListener("click", () => {
      const prompt = this.add("new prompt");
      const text = this.list.querySelector(`[data-id="${prompt.id}"] .prompt-text`);
      text.focus();
      text.select();
    });
  }

  save() {
    try {
      localStorage.setItem(STORE, JSON.stringify(this.prompts));
    } catch (err) { /* not kept: the page works on */ }
  }

  add(text, weight = 0) {
    const ids = new Set(this.prompts.map((p) => p.id));
    let n = this.prompts.length;
    while (ids.has(`p${n}`)) n += 1;
    const prompt = {id: `p${n}`, text: clean(text) || "prompt", weight};
    this.prompts.push(prompt);
    this.render(prompt);
    this.save();
    this.changed();
    return prompt;
  }

  remove(prompt) {
    this.prompts = this.prompts.filter((p) => p !== prompt);
    this.list.querySelector(`[data-id="${prompt.id}"]`).remove();
    this.midi.forget(`prompt:${prompt.id}`);
    this.save();
    this.changed();
  }

  setWeight(prompt, weight) {
    prompt.weight = Math.min(MAX_WEIGHT, Math.max(0, weight));
    this.knobs.get(prompt.id).show(prompt.weight);
    this.save();
    this.changed();
  }

  render(prompt) {
    const item = document.createElement("li");
    item.className = "prompt";
    item.dataset.id = prompt.id;
    const dial = knob(`Weight of ${prompt.text}`, 0, MAX_WEIGHT, prompt.weight, (w) => this.setWeight(prompt, w));
    const text = Object.assign(document.createElement("input"), {className: "prompt-text", value: prompt.text});
    text.setAttribute("aria-label", "Prompt text");
    text.addEventListener("change", () => {
      const renamed = clean(text.value);
      if (!renamed) { text.value = prompt.text; return; } // empty: keep the last text, as PromptDJ does
      text.value = prompt.text = renamed;
      dial.element.setAttribute("aria-label", `Weight of ${renamed}`);
      this.midi.relabel(`prompt:${prompt.id}`, `"${renamed}"`);
      this.save();
      this.changed();
    });
    const cc = Object.assign(document.createElement("button"), {type: "button", className: "cc"});
    const remove = Object.assign(document.createElement("button"), {type: "button", className: "remove", textContent: "×"});
    remove.setAttribute("aria-label", "Remove prompt");
    remove.addEventListener("click", () => this.remove(prompt));
    item.append(dial.element, text, cc, remove);
    this.list.append(item);
    this.knobs.set(prompt.id, dial);
    this.midi.target(`prompt:${prompt.id}`, `"${prompt.text}"`, (value) => this.setWeight(prompt, value / 127 * MAX_WEIGHT), cc);
  }

  /** The session's styles and style_weights: the prompts turned up, or null when every knob is at 0. */
  params() {
    const active = this.prompts.filter((p) => p.weight > 0);
    if (!active.length) return null;
    return {styles: active.map((p) => p.text).join(", "),
      style_weights: active.map((p) => Number(p.weight.toFixed(3))).join(",")};
  }
}
