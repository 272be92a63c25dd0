"use strict";
// Keeps one card per camera: its live picture and its figures, polled from api/cameras.
// Names only ever reach the page through textContent, dataset and encodeURIComponent.

const POLL_MS = 500;
const RETRY_MS = 2000;
// Browsers open at most 6 connections per host over HTTP/1.1 and each MJPEG stream holds one,
// so only the first cameras stream; the others show a snapshot refreshed at each poll.
const MAX_STREAMS = 4;
const FIELDS = [
  ["state", "state"],
  ["fps", "frames/s"],
  ["bitrate_bps", "bitrate"],
  ["adapter_version", "adapter"],
  ["fallbacks", "fallbacks"],
  ["frames", "frames"],
  ["skipped_frames", "skipped"],
  ["backgrounds", "backgrounds"],
  ["latency_p50_seconds", "latency (median)"],
  ["latency_p95_seconds", "latency (p95)"],
  ["last_frame_at", "last frame"],
];

const cards = new Map();
let reachable = true;

function pictureUrl(name, kind) {
  return "live/" + encodeURIComponent(name) + "." + kind;
}

function startStream(card) {
  // A query string that changes makes the browser open a new stream after a failure.
  card.img.src = pictureUrl(card.name, "mjpg") + "?t=" + Date.now();
}

function makeCard(name) {
  const section = document.createElement("section");
  section.className = "camera";
  section.dataset.camera = name;
  const title = document.createElement("h2");
  title.textContent = name;
  const img = document.createElement("img");
  img.alt = "live picture of " + name;
  const list = document.createElement("dl");
  const fields = {};
  for (const [key, label] of FIELDS) {
    const term = document.createElement("dt");
    term.textContent = label;
    const value = document.createElement("dd");
    value.dataset.field = key;
    list.append(term, value);
    fields[key] = value;
  }
  section.append(title, img, list);
  document.getElementById("cameras").append(section);
  const card = { name, img, fields, streamed: cards.size < MAX_STREAMS, shownFrames: -1 };
  if (card.streamed) {
    img.addEventListener("error", () => setTimeout(() => startStream(card), RETRY_MS));
    startStream(card);
  }
  return card;
}

function formatBitrate(bps) {
  return bps >= 1e6 ? (bps / 1e6).toFixed(2) + " Mbit/s" : (bps / 1e3).toFixed(1) + " kbit/s";
}

function formatValue(key, value) {
  switch (key) {
    case "fps": return value.toFixed(1);
    case "bitrate_bps": return formatBitrate(value);
    case "adapter_version": return value === 0 ? "base model" : "version " + value;
    case "last_frame_at": return value === null ? "never" : new Date(value * 1000).toLocaleTimeString();
    case "latency_p50_seconds":
    case "latency_p95_seconds": return value === null ? "-" : (value * 1000).toFixed(0) + " ms";
    default: return String(value);
  }
}

function show(camera) {
  let card = cards.get(camera.name);
  if (card === undefined) {
    card = makeCard(camera.name);
    cards.set(camera.name, card);
  }
  for (const [key] of FIELDS) {
    card.fields[key].textContent = formatValue(key, camera[key]);
  }
  card.fields.state.className = "state-" + camera.state;
  if (!card.streamed && camera.last_frame_at !== null && camera.frames !== card.shownFrames) {
    card.shownFrames = camera.frames;
    card.img.src = pictureUrl(camera.name, "jpg") + "?frame=" + camera.frames;
  }
}

function setConnection(text, isError) {
  const line = document.getElementById("connection");
  line.textContent = text;
  line.className = isError ? "error" : "";
}

async function poll() {
  try {
    const response = await fetch("api/cameras", { cache: "no-store" });
    if (response.status === 401) {
      // The login expired (or the receiver restarted): log in again.
      window.location.assign("login");
      return;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    const cameras = await response.json();
    cameras.forEach(show);
    if (!reachable) {
      // The receiver came back: its MJPEG streams ended with it, so open them again.
      for (const card of cards.values()) if (card.streamed) startStream(card);
      reachable = true;
    }
    setConnection(cameras.length + " camera" + (cameras.length === 1 ? "" : "s") +
                  ", updated " + new Date().toLocaleTimeString(), false);
  } catch (error) {
    reachable = false;
    setConnection("Receiver unreachable (" + error.message + "), retrying", true);
  }
  setTimeout(poll, POLL_MS);
}

poll();
