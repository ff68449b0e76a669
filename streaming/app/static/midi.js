// Web MIDI for the jam page, as Google's PromptDJ MIDI does it (utils/MidiDispatcher.ts, PromptController.ts): the
// player picks one MIDI input; a control change (status 0xB0-0xBF, any channel) from it moves whatever its
// controller number is bound to; "CC learn" binds a control by clicking its CC button and then moving a hardware
// knob. Bindings and the chosen input are kept in localStorage. MIDI access is asked for only when the player
// clicks "MIDI", so a page without a device or without Web MIDI never shows a permission prompt.

import {$, log} from "./ui.js";

const STORE = "jam.midi";
const CONTROL_CHANGE = 0xb0;

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) || "{}");
    return {input: saved.input || null, bindings: saved.bindings && typeof saved.bindings === "object" ? saved.bindings : {}};
  } catch (err) { // storage disabled or a corrupt entry: start unbound
    return {input: null, bindings: {}};
  }
}

export class Midi {
  constructor() {
    const saved = load();
    this.access = null;
    this.inputId = saved.input; // the chosen input's id (MIDIInput.id), kept across visits
    this.bindings = saved.bindings; // target key -> controller number
    this.targets = new Map(); // target key -> {label, apply(value 0..127), button}
    this.learning = null; // the key waiting for its control, or null
    this.select = $("midi-input");
    this.select.addEventListener("change", () => { this.inputId = this.select.value || null; this.save(); });
    document.addEventListener("keydown", (event) => { if (event.key === "Escape" && this.learning) this.learn(null); });
    const button = $("midi");
    if (!this.available) Object.assign(button, {disabled: true, title: "This browser has no Web MIDI"});
    button.addEventListener("click", () => this.enable().then(() => button.setAttribute("aria-pressed", "true"),
      (err) => log(`MIDI unavailable: ${err.message}`, "error")));
  }

  get available() {
    return typeof navigator.requestMIDIAccess === "function";
  }

  save() {
    try {
      localStorage.setItem(STORE, JSON.stringify({input: this.inputId, bindings: this.bindings}));
    } catch (err) {
      log(`MIDI bindings not kept: ${err.message}`, "warning");
    }
  }

  /** Asks for MIDI access (once) and lists the inputs; their CC messages are read from then on. */
  async enable() {
    if (this.access) return;
    this.access = await navigator.requestMIDIAccess({sysex: false});
    this.access.onstatechange = () => this.listInputs();
    this.listInputs();
    document.body.classList.add("midi-on");
  }

  listInputs() {
    const inputs = [...this.access.inputs.values()];
    for (const input of inputs) input.onmidimessage = (event) => this.onMessage(input, event);
    if (!inputs.some((input) => input.id === this.inputId)) this.inputId = inputs.length ? inputs[0].id : null;
    this.select.replaceChildren(...(inputs.length ? inputs.map((input) => new Option(input.name || input.id, input.id))
      : [new Option("No MIDI inputs found", "")]));
    this.select.value = this.inputId || "";
    this.select.disabled = !inputs.length;
  }

  /** A control that MIDI can drive: `apply` gets the CC value (0..127); `button` is its CC learn button. */
  target(key, label, apply, button) {
    this.targets.set(key, {label, apply, button});
    button.addEventListener("click", () => this.learn(this.learning === key ? null : key));
    this.show(key);
  }

  /** A slider MIDI can drive: a control change sets it to min + value / 127 x (max - min) (the browser keeps it
   * on the slider's steps), then `moved()`. */
  slider(input, label, button, moved) {
    this.target(`param:${input.id}`, label, (value) => {
      const min = Number(input.min), max = Number(input.max);
      input.value = String(min + value / 127 * (max - min));
      moved();
    }, button);
  }

  /** Forgets a control and its binding (a removed prompt). */
  forget(key) {
    this.targets.delete(key);
    if (this.learning === key) this.learning = null;
    if (key in this.bindings) { delete this.bindings[key]; this.save(); }
  }

  relabel(key, label) {
    const target = this.targets.get(key);
    if (target) target.label = label;
  }

  learn(key) {
    const previous = this.learning;
    this.learning = key;
    if (previous) this.show(previous);
    if (key) this.show(key);
  }

  show(key) {
    const target = this.targets.get(key);
    if (!target) return;
    const learning = this.learning === key;
    target.button.textContent = learning ? "Learn…" : key in this.bindings ? `CC ${this.bindings[key]}` : "CC –";
    target.button.classList.toggle("learning", learning);
    target.button.setAttribute("aria-pressed", String(learning));
    target.button.title = learning ? "Move a knob on the MIDI controller (Esc cancels)"
      : `Click, then move a MIDI knob to bind it to ${target.label}`;
  }

  onMessage(input, event) {
    if (input.id !== this.inputId || !event.data || event.data.length < 3) return;
    const [status, cc, value] = event.data;
    if ((status & 0xf0) !== CONTROL_CHANGE) return; // notes, clock, pitch bend: not ours
    if (this.learning) {
      const key = this.learning;
      for (const [other, bound] of Object.entries(this.bindings)) {
        if (bound === cc && other !== key) { delete this.bindings[other]; this.show(other); } // one control each
      }
      this.bindings[key] = cc;
      this.learning = null;
      this.save();
      this.show(key);
      log(`MIDI: CC ${cc} now drives ${this.targets.get(key).label}`);
      return;
    }
    for (const [key, bound] of Object.entries(this.bindings)) {
      if (bound === cc && this.targets.has(key)) this.targets.get(key).apply(value);
    }
  }
}
