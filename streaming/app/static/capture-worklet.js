// The jam page's microphone / line-in tap (an AudioWorklet, so capture never waits on the page's main thread): mixes
// the input to mono and posts it in blocks of BLOCK frames, each with the AudioContext time of its first frame, which
// mic.js maps onto the session's output timeline. It has no output: nothing captured is played back.
"use strict";

const BLOCK = 2048; // ~43 ms at 48 kHz: few messages, well under the page's 200 ms input frames

class JamCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(BLOCK);
    this.filled = 0;
    this.startedAt = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || !channels.length) return true; // no input connected yet
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      if (this.filled === 0) this.startedAt = currentTime + i / sampleRate;
      let sum = 0;
      for (const channel of channels) sum += channel[i];
      this.block[this.filled++] = sum / channels.length;
      if (this.filled === BLOCK) {
        this.port.postMessage({time: this.startedAt, samples: this.block}, [this.block.buffer]);
        this.block = new Float32Array(BLOCK);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("jam-capture", JamCapture);
