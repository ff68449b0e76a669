// A rotary knob (PromptDJ MIDI's WeightKnob: drag up or down, or turn the wheel; a 270-degree arc shows the value),
// and an ARIA slider, so the keyboard works too: arrows step 0.05 of the range, Page Up/Down 0.25, Home/End the ends.

const SVG = "http://www.w3.org/2000/svg";
const SWEEP = 1.5 * Math.PI; // 270 degrees, from bottom-left to bottom-right

function arc(fraction) {
  const start = Math.PI / 2 + (2 * Math.PI - SWEEP) / 2, end = start + SWEEP * fraction;
  const point = (angle) => `${(40 + 32 * Math.cos(angle)).toFixed(2)} ${(40 + 32 * Math.sin(angle)).toFixed(2)}`;
  return `M ${point(start)} A 32 32 0 ${end - start > Math.PI ? 1 : 0} 1 ${point(end)}`;
}

/** A knob from `min` to `max` showing `value`; `input(value)` is called as the player turns it. */
export function knob(label, min, max, value, input) {
  const element = document.createElement("div");
  Object.assign(element, {className: "knob", tabIndex: 0});
  element.setAttribute("role", "slider");
  element.setAttribute("aria-label", label);
  element.setAttribute("aria-valuemin", String(min));
  element.setAttribute("aria-valuemax", String(max));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 80 80");
  const track = document.createElementNS(SVG, "path"), level = document.createElementNS(SVG, "path");
  track.setAttribute("class", "track");
  track.setAttribute("d", arc(1));
  level.setAttribute("class", "level");
  const readout = Object.assign(document.createElement("span"), {className: "knob-value"});
  svg.append(track, level);
  element.append(svg, readout);

  let current = value;
  const show = (v) => {
    current = v;
    const fraction = (v - min) / (max - min);
    level.setAttribute("d", fraction > 0.001 ? arc(fraction) : "");
    readout.textContent = v.toFixed(2);
    element.setAttribute("aria-valuenow", v.toFixed(2));
  };
  const set = (v) => input(Math.min(max, Math.max(min, v)));
  const span = max - min;

  element.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    element.focus();
    const startY = event.clientY, startValue = current;
    const move = (e) => set(startValue + (startY - e.clientY) * 0.005 * span); // 200 px from end to end
    const up = () => { window.removeEventListener("pointermove", move); window.removeEventListener("pointerup", up); };
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", up);
  });
  element.addEventListener("wheel", (event) => { event.preventDefault(); set(current - event.deltaY * 0.00125 * span); },
    {passive: false});
  element.addEventListener("keydown", (event) => {
    const steps = {ArrowUp: 0.05, ArrowRight: 0.05, ArrowDown: -0.05, ArrowLeft: -0.05, PageUp: 0.25, PageDown: -0.25};
    if (event.key in steps) set(current + steps[event.key] * span);
    else if (event.key === "Home") set(min);
    else if (event.key === "End") set(max);
    else return;
    event.preventDefault();
  });
  show(value);
  return {element, show};
}
