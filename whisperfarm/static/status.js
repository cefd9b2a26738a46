// The whisperfarm status page: polls /v1/status every second with the run's token as a
// bearer header and redraws. Everything from the server goes in with textContent, never
// as HTML. Transcript text is fetched only for the episodes whose "show text" is open.
"use strict";
(function () {
  const params = new URLSearchParams(window.location.search);
  const token = params.get("token") || "";
  const focus = params.get("episode");
  let allText = ["1", "yes", "true"].includes(params.get("text") || "");  // ?text=1: all open
  const EVERY = 1000;
  const open = new Set();
  const texts = new Map();
  let lastGood = null;

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, String(value));
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "?";
    let s = Math.round(seconds);
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    const two = (n) => String(n).padStart(2, "0");
    return h ? `${h}:${two(m)}:${two(s)}` : `${m}:${two(s)}`;
  }

  function age(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
  }

  function money(usd) {
    if (usd === null || usd === undefined) return "—";
    return Math.abs(usd) < 1 ? `$${usd.toFixed(3)}` : `$${usd.toFixed(2)}`;
  }

  function badge(state) {
    return el("span", { class: `badge state-${state}`, text: state });
  }

  async function get(path) {
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
    if (response.status === 401) {
      throw new Error("wrong or missing token: open the URL 'whisperfarm transcribe' printed");
    }
    if (!response.ok) throw new Error(`the coordinator answered ${response.status}`);
    return response.json();
  }

  function runLine(run) {
    const p = el("p", { "data-run": run.id },
      el("span", { class: "run-id", text: `run ${run.id}` }), " ", badge(run.state),
      ` ${run.state === "running" ? "" : "after "}${duration(run.elapsed_seconds)} · ${run.backend}`);
    if (run.machines || run.max_machines) {
      const limit = run.max_machines ? ` of ${run.max_machines}` : "";
      p.append(` · ${run.machines_running}${limit} machines up`);
    }
    if (run.machines || run.budget_usd !== null) {
      p.append(" · ", el("strong", { class: "spent", text: money(run.spent_usd) }));
      if (run.budget_usd !== null) p.append(` of ${money(run.budget_usd)} budget`);
      if (run.over_budget) p.append(" ", el("span", { class: "over", text: "over budget" }));
    }
    return p;
  }

  function episodeCard(e, withSpend) {
    const fraction = e.state === "done" ? 1 : e.audio_total > 0 ? Math.min(1, e.audio_done / e.audio_total) : 0;
    const chunking = e.state === "chunking";
    const fill = el("div", { class: "fill" });
    fill.style.width = `${(fraction * 100).toFixed(1)}%`;
    const facts = el("div", { class: "facts" },
      el("span", { class: "chunks", text: `${e.chunks_done}/${chunking ? "?" : e.chunks_total} chunks` }),
      el("span", { text: `${(e.audio_done / 60).toFixed(1)}/${chunking ? "?" : (e.audio_total / 60).toFixed(1)} min` }),
      el("span", { text: e.speed ? `${e.speed.toFixed(1)}× realtime` : "—" }),
      e.state === "done" || e.state === "failed" ? null
        : el("span", { class: "eta", text: `ETA ${e.eta_seconds === null ? "—" : duration(e.eta_seconds)}` }),
      e.chunks_dead ? el("span", { class: "state-failed", text: `${e.chunks_dead} failed` }) : null,
      withSpend ? el("span", { class: "spend", text: `${money(e.spend_usd)} spent` }) : null);
    const card = el("article", {
      class: `episode ${e.state}`,
      "data-episode": e.id,
      "data-done": e.chunks_done,
      "data-total": e.chunks_total,
    },
      el("div", { class: "top" }, el("span", { class: "name", text: e.name }), badge(e.state)),
      el("div", { class: "bar", role: "progressbar" }, fill),
      facts,
      e.error ? el("p", { class: "error", text: e.error }) : null);
    const button = el("button", { type: "button", text: open.has(e.id) ? "hide text" : "show text" });
    button.addEventListener("click", () => {
      if (open.has(e.id)) open.delete(e.id);
      else open.add(e.id);
      refresh(false);
    });
    card.append(button);
    if (open.has(e.id)) {
      const t = texts.get(e.id);
      const body = t ? (t.text || "(no speech yet)") + (t.complete ? "" : " …") : "loading…";
      card.append(el("pre", { class: "text", text: body }));
    }
    return card;
  }

  function table(headers, rows) {
    const head = el("tr", null, ...headers.map(([label, cls]) => el("th", { class: cls || null, text: label })));
    const body = rows.map((cells) => el("tr", null, ...cells.map(([value, cls]) =>
      el("td", { class: cls || null }, value))));
    return el("div", { class: "scroll" }, el("table", null, el("thead", null, head), el("tbody", null, ...body)));
  }

  function heartbeat(w) {
    if (w.state === "stale") return el("span", { class: "state-stale", text: `⚠ ${age(w.heartbeat_age)} stale` });
    if (w.state === "gone") return el("span", { class: "state-gone", text: `gone ${age(w.heartbeat_age)}` });
    return `${age(w.heartbeat_age)} ago`;
  }

  function replace(id, ...children) {
    const section = document.getElementById(id);
    section.replaceChildren(...children.filter((c) => c));
    section.hidden = children.filter((c) => c).length === 0;
  }

  function render(data) {
    const runs = document.getElementById("runs");
    runs.replaceChildren(...(data.runs.length ? data.runs.map(runLine)
      : [el("p", { class: "muted", text: "nothing running" })]));
    const withSpend = data.machines.length > 0 || data.episodes.some((e) => e.spend_usd !== null);
    replace("episodes", el("h2", { text: "Episodes" }),
      ...(data.episodes.length ? data.episodes.map((e) => episodeCard(e, withSpend))
        : [el("p", { class: "muted", text: "no episodes" })]));

    const focused = data.episodes.find((e) => e.chunks);
    replace("chunks", focused ? el("h2", { text: `Chunks of ${focused.name}` }) : null,
      focused ? el("div", { class: "chunkmap" }, ...focused.chunks.map((c) =>
        el("span", { class: `c-${c.state}`, title: `#${c.idx} ${c.state}${c.error ? ": " + c.error : ""}` }))) : null);

    replace("workers", data.workers.length ? el("h2", { text: "Workers" }) : null,
      data.workers.length ? table(
        [["Worker"], ["Where", "hide-narrow"], ["Chunk"], ["Done", "num"], ["Heartbeat", "num"]],
        data.workers.map((w) => [[w.id], [w.where, "hide-narrow"], [w.current || "—"],
          [String(w.chunks_done), "num"], [heartbeat(w), "num"]])) : null);

    replace("machines", data.machines.length ? el("h2", { text: "Machines" }) : null,
      data.machines.length ? table(
        [["Machine"], ["State"], ["Size", "hide-narrow"], ["Region", "hide-narrow"], ["Up", "num"], ["Cost", "num"]],
        data.machines.map((m) => [[m.id], [badge(m.state)], [m.size, "hide-narrow"], [m.region || "—", "hide-narrow"],
          [m.started_at === null ? "—" : duration(m.uptime_seconds), "num"], [money(m.cost_usd), "num"]])) : null);

    document.getElementById("footer").textContent =
      `read-only · ${data.running ? "refreshes every second" : "nothing is running"} · ` +
      `updated ${new Date(data.taken_at * 1000).toLocaleTimeString()}`;
  }

  function notice(message) {
    const node = document.getElementById("notice");
    node.textContent = message || "";
    node.hidden = !message;
  }

  async function refresh(schedule = true) {
    try {
      const query = focus ? `?episode=${encodeURIComponent(focus)}` : "";
      const data = await get(`/v1/status${query}`);
      if (allText) {
        data.episodes.forEach((e) => open.add(e.id));
        allText = false;
      }
      for (const id of open) {
        texts.set(id, await get(`/v1/episodes/${encodeURIComponent(id)}/text`));
      }
      lastGood = data;
      render(data);
      notice("");
    } catch (error) {
      if (lastGood) render(lastGood);
      notice(error instanceof TypeError
        ? "can't reach the coordinator: the run has probably ended (showing the last picture)"
        : error.message);
    }
    if (schedule) setTimeout(refresh, EVERY);
  }

  if (!token) notice("no token: open the URL 'whisperfarm transcribe' printed (it ends in ?token=…)");
  else refresh();
})();
