// Microphone / line-in for the jam page. The input is asked for only when the player turns it on (no permission
// prompt on load) and without the browser's voice processing (echo cancellation, noise suppression and automatic
// gain would mangle an instrument: play with headphones). An AudioWorklet (capture-worklet.js) taps it in the
// page's AudioContext, which also plays /ws/jam's chunks, so a captured sample's context time says what the player
// was hearing when they played it; jam.js turns that into the session's output timeline.

const FRAME_SECONDS = 0.2; // one `input` message per 200 ms (the protocol asks for 100 to 250 ms)
const loaded = new WeakSet(); // the AudioContexts that have the worklet

export class Mic {
  /** `frame({time, sampleRate, samples})` gets each 200 ms of mono input, `time` in AudioContext seconds of its
   * first sample; `meter` (a <meter> 0..1) and `readout` show its peak after `gain()`, what the session gets. */
  constructor(frame, meter, readout, gain) {
    Object.assign(this, {frame, meter, readout, gain, stream: null, shown: 0});
  }

  /** The peak meter: the block's peak, falling 20 dB a second after it (blocks come ~21 times a second). */
  level(peak) {
    this.shown = Math.max(Math.min(1, peak * this.gain()), this.shown * 0.9);
    const level = this.shown > 0.001 ? this.shown : 0;
    this.meter.value = level;
    this.readout.textContent = level > 0 ? `${(20 * Math.log10(level)).toFixed(0)} dBFS` : "–";
  }

  get track() {
    return this.stream ? this.stream.getAudioTracks()[0] : null;
  }

  async start(ctx) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this browser offers no microphone here (it needs https or localhost)");
    }
    const stream = await navigator.mediaDevices.getUserMedia(
      {audio: {echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
    if (!loaded.has(ctx)) {
      await ctx.audioWorklet.addModule("/static/capture-worklet.js");
      loaded.add(ctx);
    }
    this.ctx = ctx;
    this.stream = stream;
    this.source = ctx.createMediaStreamSource(stream);
    this.node = new AudioWorkletNode(ctx, "jam-capture", {numberOfInputs: 1, numberOfOutputs: 0});
    this.node.port.onmessage = ({data}) => this.take(data);
    this.source.connect(this.node);
    this.pending = [];
  }

  take({time, samples}) {
    let peak = 0;
    for (let i = 0; i < samples.length; i++) peak = Math.max(peak, Math.abs(samples[i]));
    this.level(peak);
    if (!this.pending.length) this.pendingTime = time;
    this.pending.push(samples);
    const frames = this.pending.reduce((n, block) => n + block.length, 0);
    if (frames < FRAME_SECONDS * this.ctx.sampleRate) return;
    const joined = new Float32Array(frames);
    let at = 0;
    for (const block of this.pending) { joined.set(block, at); at += block.length; }
    this.pending = [];
    this.frame({time: this.pendingTime, sampleRate: this.ctx.sampleRate, samples: joined});
  }

  stop() {
    if (!this.stream) return;
    this.stream.getTracks().forEach((track) => track.stop());
    this.source.disconnect();
    this.node.port.onmessage = null;
    this.stream = null;
    this.shown = 0;
    this.level(0);
  }
}

/** Samples (-1..1) as base64 of little-endian 16-bit PCM, the `input` message's `audio`. */
export function pcm16Base64(samples) {
  const pcm = new DataView(new ArrayBuffer(samples.length * 2));
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    pcm.setInt16(2 * i, Math.round(s * 32767), true);
  }
  const bytes = new Uint8Array(pcm.buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}
