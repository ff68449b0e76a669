# The Python client of shared/seeds/000 (Magenta RealTime jam API), verbatim but for the indentation the page
# lost; tests replace only the URL.
import asyncio, json, websockets, base64, soundfile as sf, io
async def run(url):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type":"start","mode":"rt","binary_audio":False,
            "params": {"styles":"warmup","temperature":1.1,"topk":40,"guidance_weight":1.1,"pace":"realtime"}}))
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("type") == "chunk":
                wav = base64.b64decode(msg["audio_base64"]) # bytes of a WAV
                x, sr = sf.read(io.BytesIO(wav), dtype="float32")
                print("chunk", x.shape, sr)
            elif msg.get("type") in ("stopped","error"): break
asyncio.run(run("wss://YOUR_SPACE/ws/jam"))
