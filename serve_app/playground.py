"""GET /: a one-page playground for local runs. Self-contained (no CDN), no torch.

The page posts to /predict with fetch and shows the image, its timings and the last results.
"""

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SD-Turbo playground</title>
<style>
  body { font: 15px system-ui, sans-serif; margin: 1.5rem auto; max-width: 60rem; color: #222; }
  h1 { font-size: 1.3rem; }
  form { display: grid; grid-template-columns: repeat(4, 1fr); gap: .5rem 1rem; }
  label { display: flex; flex-direction: column; font-size: .8rem; color: #555; }
  #prompt { grid-column: 1 / -1; font-size: 1rem; padding: .4rem; }
  button { grid-column: 1 / -1; padding: .5rem; font-size: 1rem; cursor: pointer; }
  #result { display: flex; gap: 1rem; margin-top: 1rem; align-items: flex-start; }
  #image { max-width: 512px; background: #eee; min-width: 128px; min-height: 128px; }
  #error { color: #b00; white-space: pre-wrap; }
  #timings td { padding: 0 .5rem; } #timings td:last-child { text-align: right; }
  #history { display: flex; gap: .5rem; flex-wrap: wrap; margin-top: 1rem; }
  #history figure { margin: 0; font-size: .7rem; width: 96px; cursor: pointer; }
  #history img { width: 96px; height: 96px; object-fit: cover; }
</style>
</head>
<body>
<h1>SD-Turbo playground</h1>
<form id="form">
  <input id="prompt" name="prompt" required maxlength="2000"
         value="a futuristic cat floating in the clouds" aria-label="prompt">
  <label>steps <input id="steps" type="number" min="1" max="4" value="1"></label>
  <label>size <select id="size">
    <option>256</option><option selected>512</option><option>768</option><option>1024</option>
  </select></label>
  <label>seed (empty: random) <input id="seed" type="number" min="0"></label>
  <label>format <select id="format">
    <option>png</option><option>jpeg</option><option>webp</option>
  </select></label>
  <label>guidance <input id="guidance" type="number" min="0" max="10" step="0.5" value="0">
  </label>
  <label style="grid-column: span 3">negative prompt <input id="negative"></label>
  <button id="generate" type="submit">Generate</button>
</form>
<p id="status" role="status"></p>
<p id="error"></p>
<div id="result">
  <img id="image" alt="generated image">
  <table id="timings"></table>
</div>
<h2 style="font-size:1rem">Last results</h2>
<div id="history"></div>
<script>
const $ = (id) => document.getElementById(id);
const history = [];

function request() {
  const size = Number($("size").value);
  const body = {
    prompt: $("prompt").value, num_inference_steps: Number($("steps").value),
    width: size, height: size, output_format: $("format").value,
    guidance_scale: Number($("guidance").value),
  };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("negative").value) body.negative_prompt = $("negative").value;
  return body;
}

function show(entry) {
  $("image").src = entry.src;
  const t = entry.timings;
  const rows = [["seed", entry.seed], ["size", entry.size], ["round trip", entry.rtt + " ms"],
    ["server total", t.total_ms.toFixed(0) + " ms"], ["queue", t.queue_ms.toFixed(0) + " ms"],
    ["inference", t.inference_ms.toFixed(0) + " ms"], ["encode", t.encode_ms.toFixed(0) + " ms"],
    ["batch size", t.batch_size]];
  $("timings").innerHTML = rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("");
}

function remember(entry) {
  history.unshift(entry);
  history.length = Math.min(history.length, 6);
  $("history").replaceChildren(...history.map((e) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = e.src;
    const cap = document.createElement("figcaption");
    cap.textContent = `${e.prompt.slice(0, 40)} (seed ${e.seed})`;
    fig.append(img, cap);
    fig.onclick = () => show(e);
    return fig;
  }));
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = request();
  $("generate").disabled = true;
  $("error").textContent = "";
  $("status").textContent = "generating...";
  const start = performance.now();
  try {
    const response = await fetch("predict", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
    const entry = {
      src: `data:image/${data.output_format};base64,${data.image}`, seed: data.seed,
      size: `${data.width}x${data.height}`, prompt: body.prompt, timings: data.timings,
      rtt: (performance.now() - start).toFixed(0),
    };
    show(entry);
    remember(entry);
    $("status").textContent = "done";
  } catch (err) {
    $("error").textContent = String(err.message || err);
    $("status").textContent = "failed";
  } finally {
    $("generate").disabled = false;
  }
});
</script>
</body>
</html>
"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    return HTMLResponse(PAGE)
