"use strict";
// Keeps one card per camera: its live picture and its figures, polled from api/cameras.
// Names only ever reach the page through textContent, dataset and encodeURIComponent.
//
// Each camera plays over WebRTC (WHEP: POST an offer to whep/CAMERA, 201 with the answer and a
// Location to DELETE at the end) in a <video>. When WebRTC cannot connect (no RTCPeerConnection,
// the receiver refuses the offer or does not serve WHEP, ICE fails, or no frame comes within
// FIRST_FRAME_MS) the card falls back to the MJPEG stream in an <img>.

const POLL_MS = 500;
const RETRY_MS = 2000;
const ICE_GATHERING_MS = 2000;
// The receiver's aiortc does no trickle ICE: the offer goes once gathering completed, or after this.
const FIRST_FRAME_MS = 6000;
// Browsers open at most 6 connections per host over HTTP/1.1 and each MJPEG stream holds one,
// so only the first cameras that fall back stream MJPEG; the others show a snapshot refreshed at
// each poll. WebRTC holds no HTTP connection.
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
const TRANSPORTS = {
  connecting: "connecting (WebRTC)",
  webrtc: "WebRTC",
  mjpeg: "MJPEG",
  snapshots: "JPEG snapshots",
};

const cards = new Map();
let reachable = true;
let mjpegStreams = 0;

function pictureUrl(name, kind) {
  return "live/" + encodeURIComponent(name) + "." + kind;
}

function startStream(card) {
  // A query string that changes makes the browser open a new stream after a failure.
  card.img.src = pictureUrl(card.name, "mjpg") + "?t=" + Date.now();
}

function setTransport(card, transport, why) {
  card.transport = transport;
  card.section.dataset.transport = transport;
  card.transportField.textContent = TRANSPORTS[transport] + (why ? " (WebRTC: " + why + ")" : "");
}

// The picture is there: hide the "connecting" placeholder and show `element` at its own size.
function showPicture(card, element) {
  card.placeholder.hidden = true;
  card.video.hidden = element !== card.video;
  card.img.hidden = element !== card.img;
}

function iceGathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ICE_GATHERING_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

// End the card's WebRTC session, if it has one, here and on the receiver.
function stopWebRTC(card) {
  clearTimeout(card.firstFrameTimer);
  if (card.pc) card.pc.close();
  if (card.location) fetch(card.location, { method: "DELETE", keepalive: true }).catch(() => {});
  card.pc = null;
  card.location = null;
}

function fallBack(card, why) {
  if (card.transport === "mjpeg" || card.transport === "snapshots") return;
  stopWebRTC(card);
  if (mjpegStreams < MAX_STREAMS) {
    mjpegStreams += 1;
    setTransport(card, "mjpeg", why);
    startStream(card);
  } else {
    setTransport(card, "snapshots", why);
  }
}

function countFrames(card) {
  const video = card.video;
  const onFrame = () => {
    card.videoFrames += 1;
    video.dataset.frames = String(card.videoFrames);
    if (card.transport === "connecting") {
      clearTimeout(card.firstFrameTimer);
      setTransport(card, "webrtc");
      showPicture(card, video);
    }
  };
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const next = () => {
      onFrame();
      video.requestVideoFrameCallback(next);
    };
    video.requestVideoFrameCallback(next);
  } else {
    video.addEventListener("timeupdate", onFrame);
  }
}

async function startWebRTC(card) {
  if (typeof RTCPeerConnection !== "function") {
    fallBack(card, "not in this browser");
    return;
  }
  setTransport(card, "connecting");
  const pc = new RTCPeerConnection();
  card.pc = pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addEventListener("track", (event) => {
    card.video.srcObject = event.streams[0] || new MediaStream([event.track]);
  });
  pc.addEventListener("connectionstatechange", () => {
    if (pc !== card.pc || pc.connectionState !== "failed") return;
    if (card.transport === "webrtc") {
      // It played, then the path or the receiver went away: connect again.
      stopWebRTC(card);
      setTimeout(() => startWebRTC(card), RETRY_MS);
    } else {
      fallBack(card, "connection failed");
    }
  });
  card.firstFrameTimer = setTimeout(() => fallBack(card, "no video"), FIRST_FRAME_MS);
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    const response = await fetch("whep/" + encodeURIComponent(card.name), {
      method: "POST",
      headers: { "Content-Type": "application/sdp" },
      body: pc.localDescription.sdp,
    });
    if (response.status !== 201) throw new Error("offer refused: HTTP " + response.status);
    if (pc !== card.pc) {
      // The card fell back meanwhile: end the session the receiver just made.
      fetch(response.headers.get("Location"), { method: "DELETE", keepalive: true }).catch(() => {});
      return;
    }
    card.location = response.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  } catch (error) {
    if (pc === card.pc) fallBack(card, error.message);
  }
}

function makeCard(name) {
  const section = document.createElement("section");
  section.className = "camera";
  section.dataset.camera = name;
  const title = document.createElement("h2");
  title.textContent = name;
  const picture = document.createElement("div");
  picture.className = "picture";
  const placeholder = document.createElement("p");
  placeholder.className = "placeholder";
  placeholder.textContent = "connecting\u2026";
  const video = document.createElement("video");
  video.autoplay = true;
  video.muted = true;
  video.playsInline = true;
  video.hidden = true;
  const img = document.createElement("img");
  img.alt = "";
  img.hidden = true;
  picture.append(placeholder, video, img);
  const list = document.createElement("dl");
  const fields = {};
  for (const [key, label] of [...FIELDS, ["transport", "transport"]]) {
    const term = document.createElement("dt");
    term.textContent = label;
    const value = document.createElement("dd");
    value.dataset.field = key;
    list.append(term, value);
    fields[key] = value;
  }
  section.append(title, picture, list);
  document.getElementById("cameras").append(section);
  const card = {
    name, section, placeholder, video, img, fields, transportField: fields.transport,
    transport: "connecting", pc: null, location: null, firstFrameTimer: null, videoFrames: 0, shownFrames: -1,
  };
  img.addEventListener("load", () => showPicture(card, img));
  img.addEventListener("error", () => {
    if (card.transport === "mjpeg") setTimeout(() => startStream(card), RETRY_MS);
  });
  countFrames(card);
  startWebRTC(card);
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
  card.placeholder.textContent = camera.state === "offline" ? "camera offline" : "connecting\u2026";
  if (card.transport === "snapshots" && camera.last_frame_at !== null && camera.frames !== card.shownFrames) {
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
      for (const card of cards.values()) if (card.transport === "mjpeg") startStream(card);
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

// Leaving the page ends its WebRTC sessions on the receiver at once (it would notice in seconds anyway).
window.addEventListener("pagehide", () => {
  for (const card of cards.values()) stopWebRTC(card);
});

poll();
