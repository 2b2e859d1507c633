// ImageNet-Clean review page. Vanilla JS, no network: data files beside the page are loaded as
// scripts (a page opened from disk may not fetch JSON). Served by `imagenet-clean review`, the
// buttons write rows to the split's overrides file through /api/; opened as a file, the same rows
// are kept in this browser and offered as a CSV download.
(function () {
  "use strict";

  const store = {};
  const waiting = {};
  window.REVIEW_LOAD = function (name, data) {
    store[name] = data;
    (waiting[name] || []).forEach(function (resolve) { resolve(data); });
    delete waiting[name];
  };

  function load(name) {
    if (name in store) return Promise.resolve(store[name]);
    return new Promise(function (resolve, reject) {
      const first = !waiting[name];
      (waiting[name] = waiting[name] || []).push(resolve);
      if (!first) return;
      const script = document.createElement("script");
      script.src = "data/" + name + ".js";
      script.onerror = function () { reject(new Error("cannot load data/" + name + ".js")); };
      document.head.appendChild(script);
    });
  }

  const $ = function (id) { return document.getElementById(id); };
  const state = {
    meta: null, index: null, view: "decisions", page: 0, order: [], rows: [], server: false,
    path: null, filter: { action: "", cls: null, agree: "", sort: "priority", pair: null, size: 20 },
  };

  // ---- classes -------------------------------------------------------------------------------
  function quality(q) { return q === null ? "—" : q >= 0.001 || q === 0 ? q.toFixed(3) : q.toExponential(1); }
  function short(c) { return c === null || c === undefined ? "—" : state.meta.classes[c].split(",")[0]; }
  function named(c) { return c === null || c === undefined ? "—" : short(c) + " (" + c + ")"; }

  function parseClass(text) {
    const value = String(text || "").trim();
    if (!value) return null;
    const lead = /^(\d{1,3})(\s|$)/.exec(value);
    if (lead && +lead[1] < 1000) return +lead[1];
    const wnid = state.meta.wnids.indexOf(value);
    if (wnid >= 0) return wnid;
    const lower = value.toLowerCase();
    const names = state.meta.classes;
    for (let i = 0; i < names.length; i++) {
      if (names[i].toLowerCase() === lower || names[i].split(",")[0].toLowerCase() === lower) return i;
    }
    return null;
  }

  // ---- corrections: the same rules as stages/review_server.py merge_rows ----------------------
  function normNote(note) { return String(note || "").split(/\s+/).filter(Boolean).join(" "); }

  // (action, label) of an image once the file's keep/fix/remove row (if any) applies.
  function effective(rows, decision, id) {
    for (let i = 0; i < rows.length; i++) {
      const r = rows[i];
      if (r.image_id !== id || r.action === "secondary") continue;
      return [r.action, r.action === "fix" ? +r.new_label : r.action === "keep" ? decision.label : null];
    }
    return [decision.action, decision.new];
  }

  function mergeRows(rows, fresh, decisions) {
    rows = rows.map(function (r) { return Object.assign({}, r); });
    fresh.forEach(function (row) {
      const id = row.image_id, cls = row.new_label, decision = decisions[id];
      const mine = rows.filter(function (r) { return r.image_id === id && r.action === "secondary"; });
      if (row.action !== "secondary") {
        const main = [];
        rows.forEach(function (r, i) { if (r.image_id === id && r.action !== "secondary") main.push(i); });
        if (main.length) {
          rows[main[0]] = Object.assign({}, row);
          rows = rows.filter(function (r, i) { return main.indexOf(i) < 1; });
        } else {
          rows.push(Object.assign({}, row));
        }
        const now = effective(rows, decision, id);
        rows = rows.filter(function (r) { return mine.indexOf(r) < 0 || (now[0] !== "remove" && r.new_label !== String(now[1])); });
        return;
      }
      const now = effective(rows, decision, id);
      if (cls && now[0] === "remove") throw new Error(id + " is removed; secondary labels only apply to kept or fixed images (keep or relabel it first)");
      if (cls && cls === String(now[1])) throw new Error("class " + cls + " is the label of " + id + ", not a secondary label");
      if (!cls) {
        rows = rows.filter(function (r) { return mine.indexOf(r) < 0; });
        rows.push(Object.assign({}, row));
        return;
      }
      if (!mine.length) {
        decision.sec.forEach(function (c) {
          if (String(c) !== cls && String(c) !== String(now[1])) rows.push(Object.assign({}, row, { new_label: String(c) }));
        });
      }
      rows = rows.filter(function (r) { return !(mine.indexOf(r) >= 0 && !r.new_label); });
      if (!mine.some(function (r) { return r.new_label === cls; })) rows.push(Object.assign({}, row));
    });
    return rows;
  }

  function csvText(rows) {
    const cell = function (v) { v = String(v); return /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; };
    const lines = ["image_id,action,new_label,note"];
    rows.forEach(function (r) { lines.push([r.image_id, r.action, r.new_label, r.note].map(cell).join(",")); });
    return lines.join("\n") + "\n";
  }

  function storageKey() { return "imagenet-clean-review:" + state.meta.split; }

  function saveLocal() {
    try { localStorage.setItem(storageKey(), JSON.stringify(state.rows)); } catch (e) { /* private mode */ }
  }

  async function api(path, body) {
    const response = await fetch(path, body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  async function submit(record, rows, node) {
    try {
      if (state.server) {
        const data = await api("api/overrides", { rows: rows });
        state.rows = data.rows;
      } else {
        const decisions = {};
        decisions[record.id] = record;
        state.rows = mergeRows(state.rows, rows, decisions);
        saveLocal();
      }
      node.querySelectorAll("input.relabel, input.second").forEach(function (input) { input.value = ""; });
      say("");
    } catch (error) {
      say(error.message);
    }
    refreshCorrections();
  }

  async function undo(record) {
    try {
      if (state.server) {
        state.rows = (await api("api/undo", { image_id: record.id })).rows;
      } else {
        state.rows = state.rows.filter(function (r) { return r.image_id !== record.id; });
        saveLocal();
      }
    } catch (error) {
      say(error.message);
    }
    refreshCorrections();
  }

  function rowsFor(record, what, card) {
    const typed = card.querySelector(".note").value;
    const note = function (text) { return normNote(typed) || "review: " + text; };
    const one = function (action, label, text) {
      return { image_id: record.id, action: action, new_label: label === null ? "" : String(label), note: note(text) };
    };
    if (what === "accept") {
      const rows = [];
      if (record.action === "remove") rows.push(one("remove", null, "accepted the removal"));
      else if (record.new !== record.label) rows.push(one("fix", record.new, "accepted " + named(record.new)));
      else rows.push(one("keep", null, "accepted the label " + named(record.label)));
      if (record.action !== "remove") record.sec.forEach(function (c) { rows.push(one("secondary", c, "accepted the secondary labels")); });
      return rows;
    }
    if (what === "reject") return [one("keep", null, "rejected; keep " + named(record.label))];
    if (what === "remove") return [one("remove", null, "remove")];
    if (what === "nosecondary") return [one("secondary", null, "no secondary labels")];
    const input = card.querySelector(what === "fix" ? ".relabel" : ".second");
    const cls = parseClass(input.value);
    if (cls === null) throw new Error("unknown class " + JSON.stringify(input.value) + ": pick one from the list");
    return [one(what, cls, (what === "fix" ? "relabel to " : "secondary label ") + named(cls))];
  }

  // ---- rendering ---------------------------------------------------------------------------------
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k]; else if (attrs[k] !== null) node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }

  function say(text) { $("message").textContent = text; $("message").hidden = !text; }

  function top5Table(record) {
    const models = ["ensemble"].concat(state.meta.models);
    const lists = [record.ens].concat(record.top5);
    const head = el("tr", {}, models.map(function (m) {
      const parts = [];
      m.split("_").forEach(function (part, i) { if (i) parts.push("_", el("wbr")); parts.push(part); });
      return el("th", { title: m }, parts);
    }));
    const body = [0, 1, 2, 3, 4].map(function (rank) {
      return el("tr", {}, lists.map(function (list) {
        const item = list[rank];
        if (!item) return el("td", { text: "" });
        const cls = item[0] === record.label ? "is-label" : item[0] === record.new ? "is-new" : null;
        return el("td", { class: cls, title: state.meta.classes[item[0]] + " (" + item[0] + ")" },
          [el("span", { class: "name", text: short(item[0]) }), el("span", { class: "p", text: item[1].toFixed(3) })]);
      }));
    });
    return el("table", { class: "top5" }, [el("thead", {}, [head]), el("tbody", {}, body)]);
  }

  function controls(record) {
    const b = function (what, text, show) {
      return show ? el("button", { type: "button", "data-do": what, text: text }) : null;
    };
    const changed = record.action !== "keep" || record.new !== record.label;
    return el("div", { class: "controls" }, [
      el("div", {}, [b("accept", "Accept", true), b("reject", "Reject (keep label)", changed && record.label !== null),
        b("remove", "Remove", record.action !== "remove"), b("nosecondary", "No secondary", record.sec.length > 0),
        b("undo", "Undo", true)]),
      el("div", {}, [el("input", { class: "relabel", list: "class-list", placeholder: "relabel to…", size: 14 }),
        b("fix", "Relabel", true), el("input", { class: "second", list: "class-list", placeholder: "secondary label…", size: 14 }),
        b("secondary", "Add secondary", true)]),
      el("div", {}, [el("input", { class: "note", placeholder: "note for the overrides file (optional)", size: 40 })]),
    ]);
  }

  function card(record) {
    const media = el("div", { class: "media" }, [
      record.thumb ? el("img", { class: "thumb", src: record.thumb, loading: "lazy", alt: record.id }) : el("div", { class: "thumb missing", text: "image unreadable" }),
    ].concat(record.cams.map(function (c) {
      return el("a", { href: c[1], target: "_blank", title: "CAM overlay of " + c[0] }, [el("img", { class: "cam", src: c[1], loading: "lazy", alt: "CAM " + c[0] })]);
    })));
    const arrow = record.action === "remove" ? el("b", { text: "removed" })
      : record.new === record.label ? "kept" : el("b", { text: named(record.new) });
    const info = el("div", { class: "info" }, [
      el("h2", {}, [el("span", { class: "badge " + record.action, text: record.action }), " ", el("code", { text: record.id }),
        el("span", { class: "why", text: record.why.length ? " shown as: " + record.why.join(", ") : " looked up: not in this round" })]),
      el("p", { class: "labels" }, ["label ", el("b", { text: named(record.label) }), " → ", arrow,
        record.orig !== record.label ? " (ImageNet's label " + named(record.orig) + ")" : ""]),
      record.sec.length ? el("p", { class: "secondary", text: "secondary labels: " + record.sec.map(named).join("; ") }) : null,
      el("p", { class: "reason", text: record.reason }),
      issuesLine(record),
      record.dup !== null && record.dup !== undefined ? el("p", { class: "dup", text: "duplicate group " + record.dup }) : null,
      el("p", { class: "scores", text: "label quality " + quality(record.q) + " · the label is the top-1 of " +
        (record.agree === null ? "—" : record.agree) + " of " + state.meta.models.length +
        " models · top-5 missed by " + record.misses + (record.exempted ? " · CAM-exempted" : "") }),
      record.cl.length ? el("p", { class: "cl", text: "CL candidates: " + record.cl.map(function (c) { return c[1] + " → " + named(c[0]); }).join("; ") }) : null,
      controls(record),
      el("p", { class: "pending" }),
    ]);
    const node = el("article", { class: "card act-" + record.action, id: "card-" + record.pos, "data-id": record.id }, [media, info, top5Table(record)]);
    node.addEventListener("click", function (event) {
      const what = event.target.getAttribute("data-do");
      if (!what) return;
      if (what === "undo") { undo(record); return; }
      try { submit(record, rowsFor(record, what, node), node); } catch (error) { say(error.message); }
    });
    return node;
  }

  function issuesLine(record) {
    const found = record.issues || [];
    return found.length ? el("p", { class: "issues", text: "image issues: " + found.join(", ") }) : null;
  }

  function pendingText(id) {
    return state.rows.filter(function (r) { return r.image_id === id; }).map(function (r) {
      return r.action + (r.new_label ? " " + named(+r.new_label) : r.action === "secondary" ? " (none)" : "") + (r.note ? " — " + r.note : "");
    }).join("; ");
  }

  function refreshCorrections() {
    $("n-corrections").textContent = String(state.rows.length);
    document.querySelectorAll(".card, .dup-member:not(.other-split)").forEach(function (node) {
      const text = pendingText(node.getAttribute("data-id"));
      node.querySelector(".pending").textContent = text ? "override: " + text : "";
      node.classList.toggle("has-pending", !!text);
    });
    const table = $("corrections-table");
    table.textContent = "";
    table.appendChild(el("tr", {}, ["image_id", "action", "new_label", "note"].map(function (h) { return el("th", { text: h }); })));
    state.rows.forEach(function (r) {
      table.appendChild(el("tr", {}, [r.image_id, r.action, r.new_label ? named(+r.new_label) : "", r.note].map(function (v) { return el("td", { text: v }); })));
    });
  }

  // ---- filtering and paging ---------------------------------------------------------------------
  function matches(k) {
    const idx = state.index, f = state.filter, why = state.meta.why;
    if (f.action === "fix" || f.action === "remove" || f.action === "keep") {
      if (idx.action[k] !== f.action) return false;
    } else if (f.action && !(idx.why[k] & why[f.action])) {
      return false;
    }
    if (f.cls !== null && idx.label[k] !== f.cls && idx.new[k] !== f.cls && idx.sec[k].indexOf(f.cls) < 0) return false;
    return f.agree === "" || idx.agree[k] === +f.agree;
  }

  function recompute() {
    const f = state.filter, n = state.index.pos.length;
    let order;
    if (f.pair !== null) {
      order = state.meta.pairs[f.pair].rows.slice();
    } else {
      order = [];
      for (let k = 0; k < n; k++) order.push(k);
      if (f.sort === "-priority") order.reverse();
      if (f.sort === "ledger") order.sort(function (a, b) { return state.index.pos[a] - state.index.pos[b]; });
    }
    state.order = order.filter(matches);
    state.page = 0;
    return render();
  }

  function pager(node) {
    const pages = Math.max(1, Math.ceil(state.order.length / state.filter.size));
    node.textContent = "";
    const go = function (page, text, disabled) {
      const button = el("button", { type: "button", class: "page-" + text.toLowerCase(), text: text });
      button.disabled = disabled;
      button.onclick = function () { state.page = page; render(); window.scrollTo(0, 0); };
      return button;
    };
    node.appendChild(go(state.page - 1, "Previous", state.page === 0));
    node.appendChild(el("span", { class: "where", text: " page " + (state.page + 1) + " of " + pages + " · " + state.order.length + " images " }));
    node.appendChild(go(state.page + 1, "Next", state.page + 1 >= pages));
  }

  async function render() {
    const size = state.filter.size, part = state.order.slice(state.page * size, (state.page + 1) * size);
    const chunkRows = state.meta.chunk_rows;
    const names = Array.from(new Set(part.map(function (k) { return Math.floor(k / chunkRows); }))).map(function (c) {
      return "chunk-" + String(c).padStart(5, "0");
    });
    const chunks = await Promise.all(names.map(load));
    const byName = {};
    names.forEach(function (name, i) { byName[name] = chunks[i]; });
    const cards = $("cards");
    cards.textContent = "";
    part.forEach(function (k) {
      cards.appendChild(card(byName["chunk-" + String(Math.floor(k / chunkRows)).padStart(5, "0")][k % chunkRows]));
    });
    if (!part.length) cards.appendChild(el("p", { class: "empty", text: "No image matches these filters." }));
    pager($("pager-top"));
    pager($("pager-bottom"));
    refreshCorrections();
    document.body.setAttribute("data-ready", "1");
  }

  // Served only: any image of the split, beyond this round (record read, thumbnail drawn now).
  async function lookUp(id) {
    if (!id) return;
    try {
      const record = await api("api/record?image_id=" + encodeURIComponent(id));
      switchView("decisions");
      const cards = $("cards");
      cards.textContent = "";
      cards.appendChild(card(record));
      ["pager-top", "pager-bottom"].forEach(function (p) { $(p).textContent = "image " + id + " (looked up) "; });
      refreshCorrections();
      say("");
    } catch (error) {
      say(error.message);
    }
  }

  // ---- duplicates view: each group of the split side by side ----------------------------------
  function chunkName(slot) { return "chunk-" + String(Math.floor(slot / state.meta.chunk_rows)).padStart(5, "0"); }

  async function recordAt(slot) { return (await load(chunkName(slot)))[slot % state.meta.chunk_rows]; }

  function dupRows(record, group, what, node) {
    const row = function (action, label, text) {
      return [{ image_id: record.id, action: action, new_label: label === null ? "" : String(label),
        note: "review: duplicate group " + group.group + ": " + text }];
    };
    if (what === "keep") return row("keep", null, "keep this one as " + named(record.label));
    if (what === "remove") return row("remove", null, "remove this copy");
    const input = node.querySelector(".relabel");
    const cls = parseClass(input.value);
    if (cls === null) throw new Error("unknown class " + JSON.stringify(input.value) + ": pick one from the list");
    return row("fix", cls, "relabel to " + named(cls));
  }

  function dupMember(group, member, record) {
    const sim = member.sim === null ? "—" : member.sim.toFixed(3);
    const match = member.match ? " to " + member.match + (member.match_split !== member.split ? " (" + member.match_split + ")" : "") : "";
    const parts = [
      record && record.thumb ? el("img", { class: "thumb", src: record.thumb, alt: member.id })
        : el("div", { class: "thumb missing", text: record ? "image unreadable" : "image of split " + member.split }),
      el("p", {}, [el("code", { text: member.id }), " · " + member.split]),
      el("p", { class: "dup-kind", text: member.kind + " · similarity " + sim + match }),
    ];
    if (!record) {
      parts.push(el("p", { class: "labels" }, ["label ", el("b", { text: named(member.label) })]));
      parts.push(el("p", { class: "other", text: "correct it in the review of split " + member.split }));
      return el("div", { class: "dup-member other-split", "data-id": member.id }, parts);
    }
    const arrow = record.action === "remove" ? "removed" : record.new === record.label ? "kept" : named(record.new);
    const b = function (what, text) { return el("button", { type: "button", "data-do": what, text: text }); };
    parts.push(el("p", { class: "labels" }, ["label ", el("b", { text: named(record.label) }), " → " + arrow]));
    parts.push(issuesLine(record));
    parts.push(el("p", { class: "reason", text: record.reason }));
    parts.push(el("div", { class: "controls" }, [
      el("div", {}, [record.label !== null ? b("keep", "Keep") : null, b("remove", "Remove"), b("undo", "Undo")]),
      el("div", {}, [el("input", { class: "relabel", list: "class-list", placeholder: "relabel to…", size: 14 }), b("fix", "Relabel")]),
    ]));
    parts.push(el("p", { class: "pending" }));
    const node = el("div", { class: "dup-member", "data-id": record.id }, parts);
    node.addEventListener("click", function (event) {
      const what = event.target.getAttribute("data-do");
      if (!what) return;
      if (what === "undo") { undo(record); return; }
      try { submit(record, dupRows(record, group, what, node), node); } catch (error) { say(error.message); }
    });
    return node;
  }

  async function renderDuplicates() {
    const dup = state.meta.duplicates || { group: null, groups: [], total: 0 }, box = $("duplicates");
    box.textContent = "";
    $("n-duplicates").textContent = String(dup.groups.length);
    if (dup.group === null) {
      box.appendChild(el("p", { class: "empty", text: "No duplicates group configured for this split (decide." + state.meta.split + ".duplicates.group in params.yaml)." }));
      return;
    }
    if (!dup.groups.length) box.appendChild(el("p", { class: "empty", text: "No duplicate groups hold images of this split (duplicates group " + dup.group + ")." }));
    else box.appendChild(el("p", { text: "Duplicates group " + dup.group + ": " + dup.groups.length + " of " + dup.total + " groups shown." }));
    for (const group of dup.groups) {
      const records = await Promise.all(group.members.map(function (m) { return m.slot === null ? null : recordAt(m.slot); }));
      const title = "group " + group.group + " · " + group.kind + " · " + group.members.length + " images · labels " +
        group.labels.map(named).join(", ") + (group.conflicting ? " · conflicting labels" : "") + " · splits " + group.splits.join(", ");
      box.appendChild(el("article", { class: "dup-group" + (group.conflicting ? " conflicting" : ""), "data-group": String(group.group) }, [
        el("h2", { text: title }),
        el("div", { class: "dup-members" }, group.members.map(function (m, i) { return dupMember(group, m, records[i]); })),
      ]));
    }
  }

  function renderPairs() {
    const table = $("pairs-table");
    table.textContent = "";
    table.appendChild(el("tr", {}, ["#", "class a", "class b", "labelled a, predicted b", "labelled b, predicted a", "images", ""].map(function (h) { return el("th", { text: h }); })));
    state.meta.pairs.forEach(function (p, i) {
      const open = el("button", { type: "button", class: "open-pair", text: "Review" });
      open.onclick = function () { showPair(i); };
      table.appendChild(el("tr", {}, [el("td", { text: String(i + 1) }), el("td", { text: named(p.a) }), el("td", { text: named(p.b) }),
        el("td", { text: String(p.ab) }), el("td", { text: String(p.ba) }), el("td", { text: String(p.rows.length) }), el("td", {}, [open])]));
    });
    if (!state.meta.pairs.length) table.appendChild(el("tr", {}, [el("td", { text: "No confused pairs." })]));
  }

  function showPair(i) {
    state.filter.pair = i;
    const p = state.meta.pairs[i], chip = $("f-pair");
    chip.textContent = "";
    chip.appendChild(document.createTextNode("pair " + named(p.a) + " ↔ " + named(p.b) + " "));
    const clear = el("button", { type: "button", text: "×", title: "leave the pair" });
    clear.onclick = function () { state.filter.pair = null; chip.hidden = true; recompute(); };
    chip.appendChild(clear);
    chip.hidden = false;
    switchView("decisions");
    recompute();
  }

  function switchView(view) {
    state.view = view;
    ["decisions", "pairs", "duplicates", "corrections"].forEach(function (v) {
      $("view-" + v).hidden = v !== view;
      $("tab-" + v).classList.toggle("active", v === view);
    });
  }

  function download() {
    const link = $("csv-link");
    link.href = URL.createObjectURL(new Blob([csvText(state.rows)], { type: "text/csv" }));
    link.download = state.meta.split + "-overrides.csv";
    link.click();
  }

  // ---- start ------------------------------------------------------------------------------------
  async function start() {
    const meta = state.meta = await load("meta");
    state.index = await load("index");
    $("split").textContent = meta.split;
    const c = meta.counts;
    $("summary").textContent = meta.rows + " images: keep " + c.keep + ", fix " + c.fix + ", remove " + c.remove +
      ", skip " + c.skip + ", secondary labels " + meta.secondary + ". Shown here, one review round: " + meta.shown +
      " (per queue the " + meta.queue_rows + " lowest label quality: " + Object.keys(meta.queues).map(function (q) {
        return q + " " + meta.queues[q][0] + " of " + meta.queues[q][1];
      }).join(", ") + "; a sample of keeps, and the confused pairs' images).";
    const list = $("class-list");
    meta.classes.forEach(function (name, i) { list.appendChild(el("option", { value: i + " " + name.split(",")[0], label: name })); });
    for (let a = 0; a <= meta.models.length; a++) $("f-agree").appendChild(el("option", { value: String(a), text: String(a) }));
    if (location.protocol.indexOf("http") === 0) {
      try {
        const data = await api("api/overrides");
        state.server = true;
        state.rows = data.rows;
        state.path = data.path;
      } catch (error) { state.server = false; }
    }
    if (!state.server) {
      try { state.rows = JSON.parse(localStorage.getItem(storageKey()) || "[]"); } catch (e) { state.rows = []; }
    }
    $("mode").textContent = state.server ? "served: corrections are written to " + state.path
      : "opened as a file: corrections stay in this browser; download them as CSV";
    $("corrections-where").textContent = state.server
      ? "These rows are in " + state.path + "; `dvc repro` applies them."
      : "Download these rows and save them as the split's overrides file (splits.<split>.overrides in params.yaml); `dvc repro` applies them.";
    document.querySelectorAll(".tab").forEach(function (tab) {
      tab.onclick = function () { switchView(tab.getAttribute("data-view")); };
    });
    $("f-action").onchange = function (e) { state.filter.action = e.target.value; recompute(); };
    $("f-agree").onchange = function (e) { state.filter.agree = e.target.value; recompute(); };
    $("f-sort").onchange = function (e) { state.filter.sort = e.target.value; recompute(); };
    $("f-page-size").onchange = function (e) { state.filter.size = +e.target.value; recompute(); };
    $("f-class").onchange = function (e) {
      state.filter.cls = parseClass(e.target.value);
      say(e.target.value && state.filter.cls === null ? "unknown class " + JSON.stringify(e.target.value) : "");
      recompute();
    };
    $("download-csv").onclick = download;
    $("lookup").hidden = !state.server;
    $("lookup").onsubmit = function (event) { event.preventDefault(); lookUp($("lookup-id").value.trim()); };
    renderPairs();
    await renderDuplicates();
    await recompute();
  }

  window.REVIEW = { csvText: function () { return csvText(state.rows); }, mergeRows: mergeRows, state: state };
  start().catch(function (error) { say("The report could not load: " + error.message); });
})();
