"""A single-file replay page: the frames as JSON inside the page, a small player (play/pause, speed, a step
scrubber, colour by state or by stability, each token's details on hover). Nothing is fetched: no CDN, no
fonts, so it opens from disk with the network off."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..views import SETTLED_STEPS
from .frame import STATES, Frame
from .layout import LEGEND_ROLES, runs
from .palette import BACKGROUND, CLASSES, FOREGROUND, PAINTS, THEME


def render(frames: Sequence[Frame], width: int, height: int) -> str:
    data = {
        "settled": SETTLED_STEPS,
        "states": STATES,
        "classes": CLASSES,
        "said": frames[-1].said if frames else [],  # every frame's runs begin the last one's
        "vocab": {token.id: token.text for frame in frames for token in frame.canvas},
        "legend": runs(LEGEND_ROLES),
        "frames": [
            [
                frame.t,
                len(frame.said),
                frame.status,
                [token.id for token in frame.canvas],
                "".join(str(STATES.index(token.state)) for token in frame.canvas),
                [token.held for token in frame.canvas],
            ]
            for frame in frames
        ],
    }
    # Inside <script>, '</script>' or '<!--' in the answer would end the data early: JSON's \u escapes keep the
    # same string without those characters.
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
    return (
        PAGE.replace("__CSS__", _css())
        .replace("__WIDTH__", str(width))
        .replace("__HEIGHT__", str(height))
        .replace("__DATA__", payload.replace("&", "\\u0026"))
    )


def _css() -> str:
    rules = [f"body{{background:{BACKGROUND};color:{FOREGROUND}}}"]
    for role, paint in PAINTS.items():
        declarations = paint.declarations("color") + ([f"background:{paint.background}"] if paint.background else [])
        rules.append(f".{CLASSES[role]}{{{';'.join(declarations)}}}")
    # Colour by stability: red for a token that just changed, to green once it has held SETTLED_STEPS steps.
    low, high = THEME.ansi_colors[1].hex, THEME.ansi_colors[2].hex
    rules += [f".h{held}{{color:{_blend(low, high, held / SETTLED_STEPS)}}}" for held in range(SETTLED_STEPS + 1)]
    return "\n".join(rules)


def _blend(low: str, high: str, share: float) -> str:
    channels = (round(int(low[i : i + 2], 16) * (1 - share) + int(high[i : i + 2], 16) * share) for i in (1, 3, 5))
    return "#" + "".join(f"{channel:02x}" for channel in channels)


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dgemma replay</title>
<style>
body{margin:0;padding:16px;font:14px/1.35 ui-monospace,SFMono-Regular,Menlo,Consolas,'DejaVu Sans Mono',monospace}
#controls{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin-bottom:12px}
#controls input[type=range]{flex:1;min-width:160px}
button,select{font:inherit}
#screen{width:__WIDTH__ch;max-width:100%;max-height:calc(__HEIGHT__ * 1.35em);overflow:auto;margin:0;
white-space:pre-wrap;overflow-wrap:anywhere}
#canvas span:hover{outline:1px solid currentColor}
#status,#legend{margin-top:6px;white-space:pre-wrap}
#info{min-height:1.35em;margin-top:6px;opacity:.8}
__CSS__
</style>
</head>
<body>
<div id="controls">
<button id="play" type="button">Play</button>
<label>speed <select id="speed">
<option value="0.25">0.25×</option><option value="0.5">0.5×</option><option value="1" selected>1×</option>
<option value="2">2×</option><option value="4">4×</option>
</select></label>
<input id="scrub" type="range" min="0" max="0" value="0" aria-label="step">
<span id="clock"></span>
<label>colour by <select id="colour">
<option value="state" selected>state</option><option value="held">stability</option>
</select></label>
</div>
<pre id="screen"><span id="said"></span><span id="canvas"></span></pre>
<div id="status" class="x"></div>
<div id="legend"></div>
<div id="info"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const frames = data.frames;
const $ = (id) => document.getElementById(id);
let index = 0, playing = false, time = 0, last = null, timer = null;

function span(text, className) {
  const element = document.createElement("span");
  element.textContent = text;
  element.className = className;
  return element;
}

function show(k) {
  index = k;
  const [t, saidRuns, status, ids, states, held] = frames[k];
  $("said").replaceChildren(...data.said.slice(0, saidRuns).map(([text, kind]) => span(text, data.classes[kind])));
  const byHeld = $("colour").value === "held";
  $("canvas").replaceChildren(...ids.map((id, i) => {
    const state = data.states[Number(states[i])];
    const steady = Math.min(held[i], data.settled);
    const element = span(data.vocab[id], byHeld ? "h" + steady : data.classes[state]);
    element.title = "token " + id + " · " + state + " · unchanged for " + held[i] + " step(s)";
    element.dataset.info = element.title;
    return element;
  }));
  $("status").textContent = status;
  $("scrub").value = String(k);
  $("clock").textContent = t.toFixed(2) + " s · frame " + (k + 1) + "/" + frames.length;
  $("screen").scrollTop = $("screen").scrollHeight;
}

function pause() {
  playing = false;
  clearTimeout(timer);
  $("play").textContent = "Play";
}

function tick() {
  if (!playing) return;
  const now = performance.now();
  time += (now - last) / 1000 * Number($("speed").value);
  last = now;
  let k = index;
  while (k + 1 < frames.length && frames[k + 1][0] <= time) k++;
  if (k !== index) show(k);
  if (k + 1 >= frames.length) { pause(); return; }
  timer = setTimeout(tick, 30);
}

function play() {
  if (index + 1 >= frames.length) { show(0); }
  time = frames[index][0];
  last = performance.now();
  playing = true;
  $("play").textContent = "Pause";
  tick();
}

$("play").addEventListener("click", () => (playing ? pause() : play()));
$("scrub").addEventListener("input", (event) => { pause(); show(Number(event.target.value)); });
$("colour").addEventListener("change", () => show(index));
$("canvas").addEventListener("mouseover", (event) => { $("info").textContent = event.target.dataset.info || ""; });
document.addEventListener("keydown", (event) => {
  if (event.key === " " && event.target.tagName !== "SELECT") { event.preventDefault(); playing ? pause() : play(); }
});
$("legend").replaceChildren(...data.legend.map(([text, role]) => span(text, data.classes[role])));
if (frames.length) {
  $("scrub").max = String(frames.length - 1);
  show(0);
  play();
}
</script>
</body>
</html>
"""
