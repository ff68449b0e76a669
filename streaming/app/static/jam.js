// The jam page: plays the sidecar's live session over WebRTC (FastRTC's contract: POST /webrtc/offer, an Opus
// track, controls on the "text" data channel) and falls back to /ws/jam, scheduling chunks as the seed's browser
// client does (linear fades over each chunk's overlap). The controls: a knob per prompt (prompts.js), Web MIDI with
// CC learn (midi.js), and the player's microphone / line-in (mic.js), sent as `input` messages on /ws/jam and as the
// offer's audio track over WebRTC. No external code: everything is in these files.

import {Midi} from "./midi.js";
import {Mic, pcm16Base64} from "./mic.js";
import {Prompts} from "./prompts.js";
import {$, loadModel, log, setText, showNotice} from "./ui.js";

const token = new URLSearchParams(location.search).get("token");
const withToken = (path) => token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;
const CONNECT_TIMEOUT_MS = 15000; // WebRTC not connected by then (e.g. UDP blocked): fall back to the WebSocket
const UPDATE_EVERY_MS = 200; // a knob turned, by hand or MIDI, sends at most one update per 200 ms (as PromptDJ)
const MAX_UNSENT_BYTES = 1 << 20; // input waiting in the socket's buffer beyond this is dropped, never queued on

let run = null; // the current playback: {via, startedAt, firstAudioAt, chunks, underruns, late, ...}
window.jamPc = null; // the RTCPeerConnection, for tests and debugging

/** The session's parameters as the controls set them, or null when no prompt is turned up. */
function params() {
  const styles = prompts.params();
  return styles && {
    ...styles,
    temperature: Number($("temperature").value),
    topk: Number($("topk").value),
    guidance_weight: Number($("guidance").value),
    input_gain: Number($("input-gain").value),
    input_mode: $("input-mode").value,
  };
}

let sharedContext = null;
/** The page's one AudioContext: it plays /ws/jam's chunks and taps the microphone, so their times compare. */
function audioContext() {
  if (!sharedContext) sharedContext = new AudioContext();
  if (sharedContext.state === "suspended") sharedContext.resume();
  return sharedContext;
}

function playing(on) {
  $("play").disabled = on;
  $("stop").disabled = !on;
  $("apply").disabled = !on;
  $("transport").disabled = on;
}

function firstAudio() {
  if (!run || run.firstAudioAt) return;
  run.firstAudioAt = performance.now();
  setText("ttfa", `${((run.firstAudioAt - run.startedAt) / 1000).toFixed(2)} s`, "good");
}

function showChunk(index, rtf, bufferSeconds) {
  run.chunks = index + 1;
  setText("chunks", String(run.chunks));
  setText("rtf", rtf.toFixed(2), rtf < 0.9 ? "good" : rtf < 1 ? "warn" : "bad");
  setText("buffer", `${bufferSeconds.toFixed(2)} s ahead`, bufferSeconds > 0.3 ? "good" : "warn");
}

function showLate() {
  setText("late", `${run.underruns} underruns · ${run.late} late chunks`, run.underruns || run.late ? "warn" : "good");
}

function showAck(data) {
  const heard = data.heard_in_seconds !== undefined ? ` (~${data.heard_in_seconds.toFixed(1)} s)` : "";
  const from = Number.isInteger(data.applies_from_chunk) ? `chunk ${data.applies_from_chunk}` : "the next chunk";
  const text = `${data.changed.join(", ")} → heard from ${from}${heard}`;
  setText("ack", text, "good");
  log(`update acknowledged: ${text}`);
}

// -- WebRTC -------------------------------------------------------------------------------------------------------
function preferStereo(sdp) {
  // Chrome decodes Opus as mono unless the receiver's fmtp asks for stereo.
  const match = sdp.match(/a=rtpmap:(\d+) opus\/48000\/2/i);
  if (!match) return sdp;
  return sdp.replace(new RegExp(`a=fmtp:${match[1]} (.*)`), (line, rest) =>
    rest.includes("stereo=1") ? line : `a=fmtp:${match[1]} ${rest.trim()};stereo=1;sprop-stereo=1`);
}

async function postJSON(path, body) {
  const response = await fetch(withToken(path), {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  return response.json();
}

async function playWebRTC() {
  const pc = new RTCPeerConnection();
  const webrtcId = Math.random().toString(36).slice(2, 12);
  Object.assign(run, {via: "webrtc", pc, webrtcId, channel: pc.createDataChannel("text")});
  window.jamPc = pc;
  // send-receive: the player's microphone goes on this sender whenever it is on (replaceTrack, no renegotiation)
  run.micSender = pc.addTransceiver("audio", {direction: "sendrecv"}).sender;
  if (mic.track) run.micSender.replaceTrack(mic.track);
  const queued = [];
  let answered = false;
  pc.onicecandidate = ({candidate}) => {
    if (!candidate) return;
    const body = {candidate: candidate.toJSON(), webrtc_id: webrtcId, type: "ice-candidate"};
    answered ? postJSON("/webrtc/offer", body) : queued.push(body); // the id exists once the offer is answered
  };
  pc.ontrack = (event) => {
    $("audio").srcObject = event.streams[0] || new MediaStream([event.track]);
    $("audio").play().catch((err) => log(`audio playback blocked: ${err.message}`, "warning"));
  };
  pc.onconnectionstatechange = () => {
    const state = pc.connectionState;
    setText("state", state, state === "connected" ? "good" : ["failed", "closed"].includes(state) ? "bad" : "");
    if (state === "connected" && run && run.pc === pc) run.connected = true;
    // before it ever connected, play() decides (fall back or give up); afterwards the playback ends here
    if (["failed", "closed"].includes(state) && run && run.pc === pc && run.connected) finish(`connection ${state}`);
  };
  run.channel.onmessage = (event) => onWebRTCMessage(JSON.parse(event.data));
  const offer = await pc.createOffer();
  await pc.setLocalDescription({type: "offer", sdp: preferStereo(offer.sdp)});
  const reply = await postJSON("/webrtc/offer", {
    sdp: pc.localDescription.sdp, type: "offer", webrtc_id: webrtcId, params: params(),
  });
  if (reply.status === "failed") {
    const error = new Error(`${reply.meta.error}${reply.meta.detail ? ": " + reply.meta.detail : ""}` +
      `${reply.meta.limit ? " (limit " + reply.meta.limit + ")" : ""}`);
    error.refused = true; // the server said no: a WebSocket would be refused too
    throw error;
  }
  await pc.setRemoteDescription(reply);
  answered = true;
  queued.forEach((body) => postJSON("/webrtc/offer", body));
  run.statsTimer = setInterval(() => pollStats(pc), 250);
  await new Promise((resolve, reject) => {
    const deadline = setTimeout(() => reject(new Error("not connected within 15 s")), CONNECT_TIMEOUT_MS);
    const check = () => {
      if (pc.connectionState === "connected") { clearTimeout(deadline); resolve(); }
      if (pc.connectionState === "failed") { clearTimeout(deadline); reject(new Error("connection failed")); }
    };
    pc.addEventListener("connectionstatechange", check);
    check();
  });
}

async function pollStats(pc) {
  if (!run || run.pc !== pc) return;
  const stats = await pc.getStats();
  stats.forEach((report) => {
    if (report.type !== "inbound-rtp" || report.kind !== "audio") return;
    if (report.bytesReceived > 0) firstAudio(); // the server sends packets from its first audio on
    if (report.jitterBufferEmittedCount) {
      const jitterMs = 1000 * report.jitterBufferDelay / report.jitterBufferEmittedCount;
      run.jitter = `jitter buffer ${jitterMs.toFixed(0)} ms`;
    }
  });
}

function onWebRTCMessage(message) {
  const data = message.data;
  if (message.type === "warning") {
    log(data, "warning");
  } else if (message.type === "error") {
    log(data, "error");
    setText("ack", data, "bad");
  } else if (data && data.event === "started") {
    offerRecording(data.session_id);
    log(`started: seed ${data.seed}, Opus ${data.audio.bitrate / 1000} kbps ${data.audio.channels} ch ` +
      `(${data.audio.application} mode)`);
    if (data.notice) showNotice(data.notice);
  } else if (data && data.event === "chunk") {
    run.underruns = data.underruns;
    showChunk(data.index, data.real_time_factor, data.buffer_seconds);
    if (run.jitter) $("buffer").textContent += ` · ${run.jitter}`;
    showLate();
  } else if (data && data.event === "recovered") {
    log(`audio back after ${data.silence_seconds.toFixed(2)} s of silence`, "warning");
  } else if (data && data.event === "updated") {
    showAck(data);
  } else if (data && data.event === "input") { // the server placed the microphone's audio (again) on the jam
    setText("input-state", `on the WebRTC track, placed at ${data.start_seconds.toFixed(2)} s`, "good");
  } else {
    log(typeof data === "string" ? data : JSON.stringify(data));
  }
}

// -- WebSocket fallback (/ws/jam), the seed's scheduling ----------------------------------------------------------
function playWebSocket() {
  const ctx = audioContext();
  const out = ctx.createGain();
  out.connect(ctx.destination);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(withToken(`${scheme}//${location.host}/ws/jam`));
  Object.assign(run, {via: "websocket", ws, ctx, out, nextTime: 0, anchors: []});
  setText("state", "connecting");
  ws.onopen = () => {
    setText("state", "connected", "good");
    ws.send(JSON.stringify({type: "start", mode: "rt", binary_audio: false,
      params: {...params(), pace: "realtime"}}));
  };
  ws.onclose = () => { if (run && run.ws === ws) finish("connection closed"); };
  ws.onmessage = async (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "chunk") {
      await schedule(ctx, out, message);
    } else if (message.type === "status" && message.status === "updated") {
      showAck(message);
    } else if (message.type === "status" && message.status === "input_dropped") { // the engine's rate bound
      if (!run.inputDropped++) log(`input dropped: ${message.error}`, "warning");
      setText("input-state", `${run.inputDropped} input message(s) dropped: ${message.error}`, "warn");
    } else if (message.type === "started") {
      offerRecording(message.session_id);
      log(JSON.stringify(message));
    } else if (message.type === "error" || message.error) { // an error, or a status naming a problem
      log(message.error, message.type === "error" ? "error" : "warning");
      setText("ack", message.error, "bad");
    } else {
      log(JSON.stringify(message));
    }
  };
}

async function schedule(ctx, out, message) {
  const meta = message.metadata;
  const bytes = Uint8Array.from(atob(message.audio_base64), (c) => c.charCodeAt(0));
  const audio = await ctx.decodeAudioData(bytes.buffer);
  const xfade = meta.crossfade_seconds;
  const source = ctx.createBufferSource();
  const gain = ctx.createGain();
  source.buffer = audio;
  source.connect(gain).connect(out);
  if (run.nextTime < ctx.currentTime + 0.05) { // the previous chunk has (nearly) finished: this one is late
    if (run.nextTime > 0) run.late += 1;
    run.nextTime = ctx.currentTime + 0.12;
  }
  const startAt = run.nextTime, duration = audio.duration;
  // where this chunk's first sample is on the session's output timeline (what `input` times count on)
  run.anchors = [...run.anchors.slice(-15), {ctxTime: startAt, output: meta.start_seconds}];
  run.nextTime = startAt + Math.max(0, duration - xfade);
  gain.gain.setValueAtTime(0, startAt);
  gain.gain.linearRampToValueAtTime(1, startAt + xfade);
  gain.gain.setValueAtTime(1, startAt + Math.max(0, duration - xfade));
  gain.gain.linearRampToValueAtTime(0, startAt + duration);
  source.start(startAt);
  if (!run.firstAudioAt) setTimeout(firstAudio, Math.max(0, (startAt - ctx.currentTime) * 1000));
  showChunk(meta.chunk_index, meta.real_time_factor, run.nextTime - ctx.currentTime);
  showLate();
  if (meta.notice) showNotice(meta.notice);
}

/** The session's output time that the AudioContext played at `ctxTime`, or null before the first chunk. */
function outputTime(ctxTime) {
  if (!run.anchors.length) return null;
  let anchor = run.anchors[0];
  for (const a of run.anchors) if (a.ctxTime <= ctxTime) anchor = a;
  return anchor.output + (ctxTime - anchor.ctxTime);
}

// -- play along: the microphone / line-in ---------------------------------------------------------------------------
/** 200 ms of the player's input: on /ws/jam an `input` message placed where the player heard the music when they
 * played it (the context's output latency taken off); over WebRTC the track carries it and this only meters it. */
function sendInput({time, sampleRate, samples}) {
  if (!run || run.via !== "websocket" || !run.ws || run.ws.readyState !== WebSocket.OPEN) return;
  const heardAt = outputTime(time - (run.ctx.outputLatency || 0));
  if (heardAt === null || heardAt < 0) return; // before the first chunk plays there is nothing to play along with
  if (run.ws.bufferedAmount > MAX_UNSENT_BYTES) { // the link is slower than the input: drop, do not queue
    if (!run.inputDropped++) log("input dropped: the connection is not keeping up", "warning");
    setText("input-state", `${run.inputDropped} input message(s) dropped: the connection is not keeping up`, "warn");
    return;
  }
  run.ws.send(JSON.stringify({type: "input", time: Number(heardAt.toFixed(4)), sample_rate: sampleRate, channels: 1,
    audio: pcm16Base64(samples)}));
  run.inputSent += 1;
  setText("input-state", `${run.inputSent} × ${(samples.length / sampleRate).toFixed(2)} s sent`, "good");
}

async function toggleMic() {
  const button = $("mic");
  if (mic.track) {
    mic.stop();
    if (run && run.micSender) run.micSender.replaceTrack(null);
  } else {
    button.disabled = true;
    try {
      await mic.start(audioContext());
      if (run && run.micSender) await run.micSender.replaceTrack(mic.track);
      log(`input on: ${mic.track.label || "microphone"}`);
    } catch (err) {
      log(`microphone / line-in unavailable: ${err.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }
  button.setAttribute("aria-pressed", String(Boolean(mic.track)));
  button.textContent = `Microphone / line-in: ${mic.track ? "on" : "off"}`;
  showInputState();
}

function showInputState() {
  const where = run && run.via === "webrtc" ? "on the WebRTC track" : "on";
  setText("input-state", mic.track ? where : "off", mic.track ? "good" : "");
}

// The whole jam, decoded afresh from its tokens on the server (kept a while after the session ends).
function offerRecording(sessionId) {
  if (!sessionId) return;
  const link = $("download");
  link.href = withToken(`/sessions/${encodeURIComponent(sessionId)}/recording?format=wav`);
  link.hidden = false;
}

// -- controls -----------------------------------------------------------------------------------------------------
async function play() {
  if (run) return;
  const sent = params();
  if (!sent) { log("turn up at least one prompt to play", "error"); return; }
  run = {startedAt: performance.now(), chunks: 0, underruns: 0, late: 0, sent, inputSent: 0, inputDropped: 0};
  playing(true);
  ["ttfa", "buffer", "late", "rtf", "chunks", "ack"].forEach((id) => setText(id, "–"));
  const transport = $("transport").value;
  if (transport !== "websocket" && "RTCPeerConnection" in window) {
    setText("via", "WebRTC (Opus)");
    setText("state", "connecting");
    try {
      await playWebRTC();
      showInputState();
      return;
    } catch (err) {
      log(`WebRTC: ${err.message}`, "error");
      if (err.refused || transport === "webrtc") { finish(err.message); return; }
      log("falling back to the WebSocket (/ws/jam)", "warning");
      closeTransport();
      Object.assign(run, {pc: null, channel: null, micSender: null});
    }
  }
  setText("via", "WebSocket (/ws/jam)");
  playWebSocket();
  showInputState();
}

function sendUpdate() {
  if (!run) return;
  const now = params(), changes = {};
  if (!now) { setText("ack", "turn up at least one prompt", "warn"); return; }
  for (const key of Object.keys(now)) if (now[key] !== run.sent[key]) changes[key] = now[key];
  if (changes.styles !== undefined && changes.style_weights === undefined) changes.style_weights = now.style_weights;
  if (!Object.keys(changes).length) { setText("ack", "nothing changed"); return; }
  const message = JSON.stringify({type: "update", ...changes});
  if (run.channel && run.channel.readyState === "open") run.channel.send(message);
  else if (run.ws && run.ws.readyState === WebSocket.OPEN) run.ws.send(message);
  else { log("not connected yet: change not sent", "warning"); return; }
  run.sent = now;
  setText("ack", "sent, waiting for acknowledgement…");
}

/** Sends the changes now, then at most once per UPDATE_EVERY_MS while a knob keeps turning (the last one included). */
function scheduleUpdate() {
  if (!run) return;
  if (run.updateTimer) { run.updatePending = true; return; }
  sendUpdate();
  const timer = setTimeout(() => {
    if (!run || run.updateTimer !== timer) return;
    run.updateTimer = null;
    if (run.updatePending) { run.updatePending = false; scheduleUpdate(); }
  }, UPDATE_EVERY_MS);
  run.updateTimer = timer;
}

function stop() {
  if (!run) return;
  if (run.channel && run.channel.readyState === "open") run.channel.send(JSON.stringify({type: "stop"}));
  if (run.ws && run.ws.readyState === WebSocket.OPEN) run.ws.send(JSON.stringify({type: "stop"}));
  finish("stopped");
}

function closeTransport() {
  if (run.statsTimer) clearInterval(run.statsTimer);
  if (run.pc) setTimeout(((pc) => () => pc.close())(run.pc), 300); // lets the stop message leave first
  if (run.ws) run.ws.close();
  if (run.out) run.out.disconnect(); // the page's AudioContext stays: the microphone may be using it
  if (run.updateTimer) clearTimeout(run.updateTimer);
  $("audio").srcObject = null;
}

function finish(reason) {
  if (!run) return;
  closeTransport();
  log(`playback ended: ${reason}`);
  setText("state", reason === "stopped" ? "stopped" : reason, reason === "stopped" ? "" : "warn");
  run = null;
  playing(false);
}

const midi = new Midi();
const prompts = new Prompts(midi, scheduleUpdate);
const mic = new Mic(sendInput, $("input-level"), $("input-level-value"), () => Number($("input-gain").value));

for (const [id, digits, label] of [["temperature", 2, "temperature"], ["topk", 0], ["guidance", 1, "guidance"],
  ["input-gain", 2, "input gain"]]) {
  const input = $(id);
  const show = () => { $(`${id}-value`).textContent = Number(input.value).toFixed(digits); };
  input.addEventListener("input", () => { show(); scheduleUpdate(); });
  if (label) midi.slider(input, label, $(`${id}-cc`), () => { show(); scheduleUpdate(); });
}
$("input-mode").addEventListener("change", scheduleUpdate);
$("mic").addEventListener("click", toggleMic);
$("controls").addEventListener("submit", (event) => { event.preventDefault(); run ? sendUpdate() : play(); });
$("play").addEventListener("click", play);
$("stop").addEventListener("click", stop);
loadModel();
