// socketkit chat: an IRC client speaking IRCv3 over WebSocket (subprotocol text.ircv3.net: one IRC
// line per text message, no CRLF). Plain ES2020, no build step, no external resources.
//
// Safety rule for this file: text that came from the network is only ever put into the page with
// textContent / createTextNode (never innerHTML), and link targets are limited to http(s) URLs.
//
// Query parameters (mostly for automation and tests):
//   nick=NAME  channel=#a,#b  autoconnect=1   prefill the login form / connect immediately
//   say=TEXT   send one message to the first channel once it is joined
//   report=1   POST a JSON snapshot of the rendered messages to ./report after each change
'use strict';

(() => {
  const WANTED_CAPS = ['server-time', 'echo-message', 'message-tags', 'batch', 'multi-prefix',
    'away-notify', 'draft/chathistory'];
  const MAX_LINES_PER_BUFFER = 1500;
  const HISTORY_FETCH = 100;
  const SERVER_KEY = '*server*';

  const params = new URLSearchParams(location.search);
  const automation = {
    say: params.get('say'),
    report: params.get('report') === '1',
    sayChannel: null,
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    log: $('log'), buffers: $('buffers'), nicks: $('nicks'), nickCount: $('nick-count'),
    bufferName: $('buffer-name'), topic: $('topic'), status: $('status'), me: $('me'),
    input: $('input'), send: $('send'), inputForm: $('input-form'), joinForm: $('join-form'),
    joinName: $('join-name'), login: $('login'), loginForm: $('login-form'), loginNick: $('login-nick'),
    loginChannel: $('login-channel'), loginError: $('login-error'),
    toggleSide: $('toggle-side'), toggleNicks: $('toggle-nicks'),
  };

  const state = {
    ws: null,
    nick: '',
    registered: false,
    capNegotiating: false,
    capLs: [],
    caps: new Set(),
    offered: new Map(),
    isupport: { prefixModes: 'ov', prefixSymbols: '@+', chantypes: '#&', casemapping: 'rfc1459',
      chanmodes: ['beI', 'k', 'l', 'imnpst'], network: '' },
    buffers: new Map(),
    active: SERVER_KEY,
    batches: new Map(),
    autojoin: [],
    manualClose: false,
    attempts: 0,
    reconnectTimer: 0,
    sent: [],
    sentIndex: -1,
    pendingSwitch: null,
    quietWho: new Set(),
  };

  // ---------------------------------------------------------------------------------------------
  // IRC line parsing and formatting

  function unescapeTag(value) {
    return value.replace(/\\(.?)/g, (_, c) => ({ ':': ';', s: ' ', r: '\r', n: '\n', '\\': '\\' }[c] ?? c));
  }

  function parseLine(line) {
    const msg = { tags: {}, source: '', nick: '', command: '', params: [] };
    let i = 0;
    const skipSpaces = () => { while (line[i] === ' ') i++; };
    const word = () => {
      const end = line.indexOf(' ', i);
      const w = end < 0 ? line.slice(i) : line.slice(i, end);
      i = end < 0 ? line.length : end;
      return w;
    };
    if (line[0] === '@') {
      i = 1;
      for (const tag of word().split(';')) {
        if (!tag) continue;
        const eq = tag.indexOf('=');
        if (eq < 0) msg.tags[tag] = '';
        else msg.tags[tag.slice(0, eq)] = unescapeTag(tag.slice(eq + 1));
      }
      skipSpaces();
    }
    if (line[i] === ':') {
      i++;
      msg.source = word();
      msg.nick = msg.source.split('!')[0].split('@')[0];
      skipSpaces();
    }
    msg.command = word().toUpperCase();
    while (i < line.length) {
      skipSpaces();
      if (i >= line.length) break;
      if (line[i] === ':') { msg.params.push(line.slice(i + 1)); break; }
      msg.params.push(word());
    }
    return msg;
  }

  function clean(text) {
    // No CR/LF/NUL may reach the wire: they would end the line early (command injection).
    return String(text).replace(/[\r\n\0]+/g, ' ');
  }

  function send(line) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(clean(line));
      return true;
    }
    return false;
  }

  function utf8Length(text) {
    return new TextEncoder().encode(text).length;
  }

  // Split text so each relayed PRIVMSG stays within IRC's 512-byte line (the relay adds our full
  // nick!user@host prefix, so keep a generous margin), preferably at a space.
  function splitText(text, budget) {
    const chunks = [];
    let rest = text;
    while (utf8Length(rest) > budget) {
      let bytes = 0;
      let cut = 0;
      for (const ch of rest) {
        const n = utf8Length(ch);
        if (bytes + n > budget) break;
        bytes += n;
        cut += ch.length;
      }
      const space = rest.lastIndexOf(' ', cut);
      if (space > cut / 2) cut = space;
      chunks.push(rest.slice(0, cut));
      rest = rest.slice(cut).replace(/^ /, '');
    }
    if (rest) chunks.push(rest);
    return chunks;
  }

  function fold(name) {
    const lower = String(name).replace(/[A-Z]/g, (c) => c.toLowerCase());
    if (state.isupport.casemapping === 'ascii') return lower;
    const map = { '[': '{', ']': '}', '\\': '|', '~': '^' };
    return lower.replace(/[[\]\\~]/g, (c) => (c === '~' && state.isupport.casemapping === 'strict-rfc1459' ? c : map[c]));
  }

  function isChannel(name) {
    return !!name && state.isupport.chantypes.includes(name[0]);
  }

  function isMe(nick) {
    return !!nick && fold(nick) === fold(state.nick);
  }

  function stripFormatting(text) {
    // eslint-disable-next-line no-control-regex
    return text.replace(/\x03(\d{1,2}(,\d{1,2})?)?|\x04([0-9a-fA-F]{6}(,[0-9a-fA-F]{6})?)?|[\x02\x0f\x11\x16\x1d\x1e\x1f]/g, '');
  }

  // ---------------------------------------------------------------------------------------------
  // Buffers (server, channels, queries) and rendering

  function getBuffer(name, kind) {
    const key = name === SERVER_KEY ? SERVER_KEY : fold(name);
    let buf = state.buffers.get(key);
    if (buf) return buf;
    const log = document.createElement('div');
    log.className = 'buffer-log';
    log.hidden = true;
    ui.log.appendChild(log);
    buf = { key, name, kind: kind || (isChannel(name) ? 'channel' : 'query'), log, members: new Map(),
      pendingNames: null, topic: '', joined: false, unread: 0, mention: false, msgids: new Set(),
      historyFetched: false, li: null };
    state.buffers.set(key, buf);
    renderBufferList();
    if (state.buffers.size === 1) switchTo(key);
    return buf;
  }

  function serverBuffer() {
    return getBuffer(SERVER_KEY, 'server');
  }

  function activeBuffer() {
    return state.buffers.get(state.active) || serverBuffer();
  }

  function nickClass(nick) {
    let h = 0;
    for (const ch of fold(nick)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return 'c' + (h % 8);
  }

  const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+[^\s<>"'`.,;:!?)\]}]/g;

  // Text nodes, plus <a> for http(s) URLs; never markup built from strings.
  function appendRichText(parent, text) {
    let last = 0;
    for (const match of text.matchAll(URL_RE)) {
      if (match.index > last) parent.appendChild(document.createTextNode(text.slice(last, match.index)));
      let url = null;
      try { url = new URL(match[0]); } catch (e) { url = null; }
      if (url && (url.protocol === 'http:' || url.protocol === 'https:')) {
        const a = document.createElement('a');
        a.href = url.href;
        a.textContent = match[0];
        a.target = '_blank';
        a.rel = 'noopener noreferrer';
        parent.appendChild(a);
      } else {
        parent.appendChild(document.createTextNode(match[0]));
      }
      last = match.index + match[0].length;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  function two(n) { return String(n).padStart(2, '0'); }

  function messageTime(msg) {
    if (msg && msg.tags && msg.tags.time) {
      const t = new Date(msg.tags.time);
      if (!Number.isNaN(t.getTime())) return t;
    }
    return new Date();
  }

  // kind: privmsg | action | notice | join | part | quit | nick | topic | mode | kick | error | info
  function addLine(buf, kind, nick, text, msg, opts = {}) {
    const msgid = msg && msg.tags ? msg.tags.msgid : undefined;
    if (msgid) {
      if (buf.msgids.has(msgid)) return;
      buf.msgids.add(msgid);
    }
    const when = messageTime(msg);
    const row = document.createElement('div');
    row.className = 'line k-' + kind;
    row.dataset.t = String(when.getTime());
    if (opts.history) row.classList.add('history');
    if (!['privmsg', 'action', 'notice', 'error'].includes(kind)) row.classList.add('event');
    const time = document.createElement('time');
    time.dateTime = when.toISOString();
    time.title = when.toLocaleString();
    time.textContent = two(when.getHours()) + ':' + two(when.getMinutes());
    row.appendChild(time);
    const who = document.createElement('span');
    who.className = 'who';
    if (nick) {
      who.classList.add(nickClass(nick));
      who.textContent = kind === 'privmsg' ? nick : kind === 'notice' ? '-' + nick + '-' : kind === 'action' ? '* ' + nick : nick;
    } else {
      who.textContent = kind === 'error' ? '!' : kind === 'info' ? '–' : '*';
    }
    row.appendChild(who);
    const body = document.createElement('span');
    body.className = 'text';
    appendRichText(body, stripFormatting(text));
    row.appendChild(body);
    const mine = nick && isMe(nick);
    if (!mine && state.nick && (kind === 'privmsg' || kind === 'action' || kind === 'notice') &&
        new RegExp('(^|[^\\w])' + state.nick.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '($|[^\\w])', 'i').test(text)) {
      row.classList.add('mention');
    }
    if (mine) row.classList.add('mine');

    const log = buf.log;
    const stick = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
    // History arrives after live lines may already be shown: keep the view ordered by time.
    let before = null;
    if (opts.history) {
      let node = log.lastElementChild;
      while (node && Number(node.dataset.t) > when.getTime()) { before = node; node = node.previousElementSibling; }
    }
    log.insertBefore(row, before);
    while (log.childElementCount > MAX_LINES_PER_BUFFER) log.firstElementChild.remove();
    if (buf.key === state.active) {
      if (stick || mine) log.scrollTop = log.scrollHeight;
    } else if (!opts.history && !mine && (kind === 'privmsg' || kind === 'action' || kind === 'notice')) {
      buf.unread++;
      if (row.classList.contains('mention') || buf.kind === 'query') buf.mention = true;
      renderBufferList();
    }
    scheduleReport();
  }

  function info(buf, text, msg) { addLine(buf, 'info', '', text, msg); }

  function renderBufferList() {
    const order = { server: 0, channel: 1, query: 2 };
    const list = [...state.buffers.values()].sort((a, b) => (order[a.kind] - order[b.kind]) || (a.key < b.key ? -1 : 1));
    ui.buffers.replaceChildren();
    for (const buf of list) {
      const li = document.createElement('li');
      li.className = 'buffer ' + buf.kind;
      if (buf.key === state.active) li.classList.add('active');
      if (buf.kind === 'channel' && !buf.joined) li.classList.add('parted');
      if (buf.mention) li.classList.add('highlight');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'buffer-button';
      const label = document.createElement('span');
      label.className = 'buffer-label';
      label.textContent = buf.kind === 'server' ? (state.isupport.network || 'server') : buf.name;
      button.appendChild(label);
      if (buf.unread) {
        const badge = document.createElement('span');
        badge.className = 'badge';
        badge.textContent = buf.unread > 99 ? '99+' : String(buf.unread);
        button.appendChild(badge);
      }
      button.addEventListener('click', () => { switchTo(buf.key); document.body.classList.remove('show-side'); });
      li.appendChild(button);
      if (buf.kind !== 'server') {
        const close = document.createElement('button');
        close.type = 'button';
        close.className = 'close';
        close.title = buf.kind === 'channel' ? 'Leave ' + buf.name : 'Close';
        close.textContent = '×';
        close.addEventListener('click', () => closeBuffer(buf));
        li.appendChild(close);
      }
      ui.buffers.appendChild(li);
    }
  }

  function closeBuffer(buf) {
    if (buf.kind === 'channel' && buf.joined) send('PART ' + buf.name);
    buf.log.remove();
    state.buffers.delete(buf.key);
    state.autojoin = state.autojoin.filter((c) => fold(c) !== buf.key);
    if (state.active === buf.key) switchTo(SERVER_KEY);
    else renderBufferList();
  }

  function switchTo(key) {
    const buf = state.buffers.get(key) || serverBuffer();
    for (const b of state.buffers.values()) b.log.hidden = b !== buf;
    state.active = buf.key;
    buf.unread = 0;
    buf.mention = false;
    buf.log.scrollTop = buf.log.scrollHeight;
    renderHeader();
    renderNicks();
    renderBufferList();
    document.body.classList.toggle('no-nicks', buf.kind !== 'channel');
  }

  function renderHeader() {
    const buf = activeBuffer();
    ui.bufferName.textContent = buf.kind === 'server' ? (state.isupport.network || 'socketkit chat') : buf.name;
    const topic = buf.kind === 'channel' ? stripFormatting(buf.topic || '') : buf.kind === 'query' ? 'Private conversation' : '';
    ui.topic.textContent = topic;
    ui.topic.title = topic;
    document.title = (buf.kind === 'server' ? '' : buf.name + ' – ') + 'socketkit chat';
  }

  function prefixRank(prefix) {
    if (!prefix) return state.isupport.prefixSymbols.length;
    const r = state.isupport.prefixSymbols.indexOf(prefix[0]);
    return r < 0 ? state.isupport.prefixSymbols.length : r;
  }

  function renderNicks() {
    const buf = activeBuffer();
    ui.nicks.replaceChildren();
    if (buf.kind !== 'channel') { ui.nickCount.textContent = 'People'; return; }
    const members = [...buf.members.values()].sort((a, b) => (prefixRank(a.prefix) - prefixRank(b.prefix)) ||
      (fold(a.nick) < fold(b.nick) ? -1 : 1));
    ui.nickCount.textContent = members.length + (members.length === 1 ? ' person' : ' people');
    for (const m of members) {
      const li = document.createElement('li');
      li.className = 'member ' + nickClass(m.nick);
      if (m.away) { li.classList.add('away'); li.title = 'away' + (m.away === true ? '' : ': ' + m.away); }
      const p = document.createElement('span');
      p.className = 'prefix';
      p.textContent = m.prefix ? m.prefix[0] : '';
      li.appendChild(p);
      li.appendChild(document.createTextNode(m.nick));
      li.addEventListener('click', () => openQuery(m.nick));
      ui.nicks.appendChild(li);
    }
  }

  function refreshIfActive(buf) {
    if (buf.key === state.active) { renderNicks(); renderHeader(); }
  }

  function openQuery(nick) {
    if (isMe(nick)) return;
    const buf = getBuffer(nick, 'query');
    switchTo(buf.key);
    document.body.classList.remove('show-nicks');
  }

  // ---------------------------------------------------------------------------------------------
  // Channel membership

  function splitPrefix(entry) {
    let i = 0;
    while (i < entry.length && state.isupport.prefixSymbols.includes(entry[i])) i++;
    return { prefix: sortPrefix(entry.slice(0, i)), nick: entry.slice(i).split('!')[0] };
  }

  function sortPrefix(symbols) {
    return [...new Set(symbols)].sort((a, b) => prefixRank(a) - prefixRank(b)).join('');
  }

  function addMember(buf, nick, prefix = '') {
    const old = buf.members.get(fold(nick));
    buf.members.set(fold(nick), { nick, prefix, away: old ? old.away : false });
  }

  function forEachChannelWith(nick, fn) {
    for (const buf of state.buffers.values()) {
      if (buf.kind === 'channel' && buf.members.has(fold(nick))) fn(buf);
    }
  }

  function applyChannelModes(buf, msg) {
    const [, modes = '', ...args] = msg.params;
    const [listModes, alwaysArg, setArg] = state.isupport.chanmodes;
    let sign = '+';
    for (const m of modes) {
      if (m === '+' || m === '-') { sign = m; continue; }
      const pi = state.isupport.prefixModes.indexOf(m);
      if (pi >= 0) {
        const nick = args.shift();
        const member = nick && buf.members.get(fold(nick));
        if (member) {
          const symbol = state.isupport.prefixSymbols[pi];
          member.prefix = sortPrefix(sign === '+' ? member.prefix + symbol : member.prefix.replace(symbol, ''));
        }
      } else if ((listModes || '').includes(m) || (alwaysArg || '').includes(m) || (sign === '+' && (setArg || '').includes(m))) {
        args.shift();
      }
    }
    refreshIfActive(buf);
  }

  // ---------------------------------------------------------------------------------------------
  // Incoming lines

  function targetBuffer(msg) {
    const target = msg.params[0] || '';
    if (isChannel(target)) return getBuffer(target, 'channel');
    if (!msg.nick || !msg.source.includes('!') || !state.registered) return serverBuffer();
    return getBuffer(isMe(msg.nick) ? target : msg.nick, 'query');
  }

  function handleCtcp(msg, text) {
    const body = text.slice(1, text.endsWith('\x01') ? -1 : undefined);
    const sp = body.indexOf(' ');
    const verb = (sp < 0 ? body : body.slice(0, sp)).toUpperCase();
    const arg = sp < 0 ? '' : body.slice(sp + 1);
    if (verb === 'ACTION') {
      addLine(targetBuffer(msg), 'action', msg.nick, arg, msg, { history: inHistoryBatch(msg) });
      return;
    }
    if (msg.command === 'NOTICE') {
      info(activeBuffer(), 'CTCP ' + verb + ' reply from ' + msg.nick + ': ' + arg, msg);
      return;
    }
    if (isMe(msg.nick) || inHistoryBatch(msg)) return;
    const replies = { VERSION: 'socketkit web chat', PING: arg, TIME: new Date().toString(), CLIENTINFO: 'ACTION CLIENTINFO PING TIME VERSION' };
    if (verb in replies) send('NOTICE ' + msg.nick + ' :\x01' + verb + (replies[verb] ? ' ' + replies[verb] : '') + '\x01');
    info(serverBuffer(), msg.nick + ' sent CTCP ' + verb, msg);
  }

  function inHistoryBatch(msg) {
    const ref = msg.tags.batch;
    const batch = ref && state.batches.get(ref);
    return !!batch && batch.type === 'chathistory';
  }

  function onMessage(msg) {
    const text = msg.params[msg.params.length - 1] || '';
    if (text[0] === '\x01') { handleCtcp(msg, text); return; }
    const fromServer = !msg.source.includes('!');
    const target = msg.params[0] || '';
    let buf;
    if (msg.command === 'NOTICE' && (fromServer || !state.registered)) buf = serverBuffer();
    else if (msg.command === 'NOTICE' && !isChannel(target) && !isMe(msg.nick)) {
      buf = state.buffers.get(fold(msg.nick)) || activeBuffer();
    } else buf = targetBuffer(msg);
    addLine(buf, msg.command === 'NOTICE' ? 'notice' : 'privmsg', msg.nick || msg.source, text, msg,
      { history: inHistoryBatch(msg) });
  }

  function onJoin(msg) {
    const name = msg.params[0];
    const buf = getBuffer(name, 'channel');
    if (isMe(msg.nick)) {
      buf.name = name;
      buf.joined = true;
      buf.members.clear();
      if (!state.autojoin.some((c) => fold(c) === buf.key)) state.autojoin.push(name);
      saveSettings();
      info(buf, 'You joined ' + name, msg);
      // NAMES does not say who is away; a WHO does (flag G), answered quietly.
      if (state.caps.has('away-notify')) { state.quietWho.add(buf.key); send('WHO ' + name); }
      if (state.caps.has('draft/chathistory')) {
        const last = [...buf.msgids].pop();
        send('CHATHISTORY LATEST ' + name + ' ' + (last ? 'msgid=' + last : '*') + ' ' + HISTORY_FETCH);
      }
      const wasPending = state.pendingSwitch && fold(state.pendingSwitch) === buf.key;
      if (wasPending || state.active === SERVER_KEY) { state.pendingSwitch = null; switchTo(buf.key); }
      renderBufferList();
    } else {
      addLine(buf, 'join', '', msg.nick + ' joined', msg);
    }
    addMember(buf, msg.nick);
    refreshIfActive(buf);
  }

  function onPart(msg) {
    const buf = getBuffer(msg.params[0], 'channel');
    const reason = msg.params[1] ? ' (' + msg.params[1] + ')' : '';
    if (isMe(msg.nick)) {
      buf.joined = false;
      buf.members.clear();
      state.autojoin = state.autojoin.filter((c) => fold(c) !== buf.key);
      saveSettings();
      info(buf, 'You left ' + buf.name + reason, msg);
      renderBufferList();
    } else {
      buf.members.delete(fold(msg.nick));
      addLine(buf, 'part', '', msg.nick + ' left' + reason, msg);
    }
    refreshIfActive(buf);
  }

  function onKick(msg) {
    const [name, victim, reason = ''] = msg.params;
    const buf = getBuffer(name, 'channel');
    buf.members.delete(fold(victim));
    const why = reason ? ' (' + reason + ')' : '';
    if (isMe(victim)) {
      buf.joined = false;
      buf.members.clear();
      state.autojoin = state.autojoin.filter((c) => fold(c) !== buf.key);
      addLine(buf, 'error', '', msg.nick + ' kicked you from ' + name + why, msg);
      renderBufferList();
    } else {
      addLine(buf, 'kick', '', msg.nick + ' kicked ' + victim + why, msg);
    }
    refreshIfActive(buf);
  }

  function onQuit(msg) {
    const reason = msg.params[0] ? ' (' + msg.params[0] + ')' : '';
    forEachChannelWith(msg.nick, (buf) => {
      buf.members.delete(fold(msg.nick));
      addLine(buf, 'quit', '', msg.nick + ' quit' + reason, msg);
      refreshIfActive(buf);
    });
  }

  function onNick(msg) {
    const newNick = msg.params[0];
    const old = msg.nick;
    if (isMe(old)) {
      state.nick = newNick;
      renderMe();
      saveSettings();
      info(activeBuffer(), 'You are now known as ' + newNick, msg);
    }
    forEachChannelWith(old, (buf) => {
      const m = buf.members.get(fold(old));
      buf.members.delete(fold(old));
      buf.members.set(fold(newNick), { ...m, nick: newNick });
      addLine(buf, 'nick', '', old + ' is now known as ' + newNick, msg);
      refreshIfActive(buf);
    });
    const query = state.buffers.get(fold(old));
    if (query && query.kind === 'query' && !state.buffers.has(fold(newNick))) {
      state.buffers.delete(query.key);
      query.key = fold(newNick);
      query.name = newNick;
      state.buffers.set(query.key, query);
      if (state.active === fold(old)) state.active = query.key;
      addLine(query, 'nick', '', old + ' is now known as ' + newNick, msg);
      renderBufferList();
      renderHeader();
    }
  }

  function onAway(msg) {
    const away = msg.params.length ? (msg.params[0] || true) : false;
    forEachChannelWith(msg.nick, (buf) => {
      buf.members.get(fold(msg.nick)).away = away;
      refreshIfActive(buf);
    });
  }

  function onCap(msg) {
    const sub = (msg.params[1] || '').toUpperCase();
    const last = msg.params[msg.params.length - 1] || '';
    const more = msg.params.length > 3 && msg.params[2] === '*';
    const words = last.split(' ').filter(Boolean);
    if (sub === 'LS' || sub === 'NEW') {
      for (const w of words) {
        const eq = w.indexOf('=');
        state.offered.set(eq < 0 ? w : w.slice(0, eq), eq < 0 ? '' : w.slice(eq + 1));
      }
      if (sub === 'LS' && more) return;
      const want = WANTED_CAPS.filter((c) => state.offered.has(c) && !state.caps.has(c));
      if (want.length) send('CAP REQ :' + want.join(' '));
      else if (state.capNegotiating) endCap();
    } else if (sub === 'ACK') {
      for (const w of words) {
        if (w[0] === '-') state.caps.delete(w.slice(1));
        else state.caps.add(w);
      }
      if (state.capNegotiating) endCap();
    } else if (sub === 'NAK') {
      if (state.capNegotiating) endCap();
    } else if (sub === 'DEL') {
      for (const w of words) { state.caps.delete(w); state.offered.delete(w); }
    }
  }

  function endCap() {
    state.capNegotiating = false;
    send('CAP END');
  }

  function onIsupport(msg) {
    for (const token of msg.params.slice(1, -1)) {
      const eq = token.indexOf('=');
      const key = (eq < 0 ? token : token.slice(0, eq)).toUpperCase();
      const value = eq < 0 ? '' : token.slice(eq + 1);
      if (key === 'PREFIX') {
        const m = /^\(([^)]*)\)(.*)$/.exec(value);
        if (m && m[1].length === m[2].length) { state.isupport.prefixModes = m[1]; state.isupport.prefixSymbols = m[2]; }
      } else if (key === 'CHANTYPES' && value) state.isupport.chantypes = value;
      else if (key === 'CASEMAPPING' && value) state.isupport.casemapping = value.toLowerCase();
      else if (key === 'CHANMODES' && value) state.isupport.chanmodes = value.split(',');
      else if (key === 'NETWORK' && value) { state.isupport.network = value; renderBufferList(); renderHeader(); }
    }
  }

  function onRegistered(msg) {
    state.registered = true;
    state.nick = msg.params[0];
    state.attempts = 0;
    setStatus('online', 'online');
    renderMe();
    saveSettings();
    ui.input.disabled = false;
    ui.send.disabled = false;
    info(serverBuffer(), msg.params[1] || 'Welcome', msg);
    if (state.autojoin.length) send('JOIN ' + state.autojoin.join(','));
    if (!isNarrow()) ui.input.focus();
  }

  function onNickInUse(msg) {
    if (state.registered) { showError(msg); return; }
    // Registration: keep trying with a suffix, as IRC clients have always done.
    let nick = (msg.params[1] && msg.params[1] !== '*' ? msg.params[1] : state.nick) + '_';
    if (nick.length > 30) nick = nick.slice(0, 24) + Math.floor(Math.random() * 1e5);
    state.nick = nick;
    info(serverBuffer(), 'Nickname in use, trying ' + nick, msg);
    send('NICK ' + nick);
  }

  function showError(msg) {
    const params = msg.params.slice(1);
    const last = params.pop() || '';
    const ctx = params.join(' ');
    const where = params.find((p) => isChannel(p) && state.buffers.has(fold(p)));
    const buf = where ? getBuffer(where, 'channel') : state.registered ? activeBuffer() : serverBuffer();
    addLine(buf, 'error', '', (ctx ? ctx + ': ' : '') + last + ' (' + msg.command + ')', msg);
  }

  function onStandardReply(msg) {
    const [command, code, ...rest] = msg.params;
    const description = rest.pop() || '';
    const kind = msg.command === 'FAIL' ? 'error' : 'info';
    addLine(state.registered ? activeBuffer() : serverBuffer(), kind, '',
      msg.command + ' ' + command + ' ' + code + (rest.length ? ' ' + rest.join(' ') : '') + ': ' + description, msg);
  }

  function onNumeric(msg) {
    const code = Number(msg.command);
    const p = msg.params;
    const last = p[p.length - 1] || '';
    switch (code) {
      case 1: onRegistered(msg); return;
      case 5: onIsupport(msg); return;
      case 2: case 3: case 4: case 251: case 252: case 253: case 254:
        info(serverBuffer(), p.slice(1).join(' '), msg); return;
      case 250: case 255: case 265: case 266: case 375: case 372: case 376: case 422:
        info(serverBuffer(), last, msg); return;
      case 331: { const buf = getBuffer(p[1], 'channel'); buf.topic = ''; refreshIfActive(buf); return; }
      case 332: {
        const buf = getBuffer(p[1], 'channel');
        buf.topicQuiet = buf.topic === last;  // rejoined after a reconnect: nothing new to say
        buf.topic = last;
        if (!buf.topicQuiet) addLine(buf, 'topic', '', 'Topic: ' + last, msg);
        refreshIfActive(buf);
        return;
      }
      case 333: {
        const buf = getBuffer(p[1], 'channel');
        if (buf.topicQuiet) return;
        const when = Number(p[3]) ? ' on ' + new Date(Number(p[3]) * 1000).toLocaleString() : '';
        info(buf, 'Topic set by ' + (p[2] || '').split('!')[0] + when, msg);
        return;
      }
      case 353: {
        const buf = getBuffer(p[2], 'channel');
        if (!buf.pendingNames) buf.pendingNames = new Map();
        for (const entry of last.split(' ').filter(Boolean)) {
          const { prefix, nick } = splitPrefix(entry);
          const old = buf.members.get(fold(nick));
          buf.pendingNames.set(fold(nick), { nick, prefix, away: old ? old.away : false });
        }
        return;
      }
      case 366: {
        const buf = getBuffer(p[1], 'channel');
        if (buf.pendingNames) { buf.members = buf.pendingNames; buf.pendingNames = null; }
        refreshIfActive(buf);
        if (automation.say && automation.sayChannel && fold(automation.sayChannel) === buf.key) {
          const text = automation.say;
          automation.say = null;
          sendMessage(buf, text);
        }
        return;
      }
      case 352: {  // RPL_WHOREPLY: me channel user host server nick flags :hops realname
        const buf = state.buffers.get(fold(p[1]));
        if (!buf || !state.quietWho.has(buf.key)) break;
        const member = buf.members.get(fold(p[5] || ''));
        if (member) member.away = (p[6] || '').includes('G') ? (member.away || true) : false;
        return;
      }
      case 315: {
        const key = fold(p[1] || '');
        if (!state.quietWho.has(key)) break;
        state.quietWho.delete(key);
        const buf = state.buffers.get(key);
        if (buf) refreshIfActive(buf);
        return;
      }
      case 324: info(getBuffer(p[1], 'channel'), 'Modes: ' + p.slice(2).join(' '), msg); return;
      case 329: return;
      case 301: {
        const buf = state.buffers.get(fold(p[1])) || activeBuffer();
        info(buf, p[1] + ' is away: ' + last, msg);
        return;
      }
      case 305: case 306: info(activeBuffer(), last, msg); return;
      case 433: onNickInUse(msg); return;
      case 432:
        if (!state.registered) {
          state.nick = 'web' + Math.floor(1000 + Math.random() * 9000);
          info(serverBuffer(), 'That nickname is not allowed, using ' + state.nick, msg);
          send('NICK ' + state.nick);
          return;
        }
        break;
      default:
        break;
    }
    if (code >= 400 && code < 600) { showError(msg); return; }
    if (code >= 311 && code <= 319 || code === 330 || code === 338 || code === 378 || code === 671 || code === 341) {
      info(activeBuffer(), p.slice(1).join(' '), msg);
      return;
    }
    info(serverBuffer(), p.slice(1).join(' '), msg);
  }

  function handleLine(line) {
    const msg = parseLine(line);
    if (!msg.command) return;
    switch (msg.command) {
      case 'PING': send('PONG :' + (msg.params[msg.params.length - 1] || '')); return;
      case 'PONG': return;
      case 'CAP': onCap(msg); return;
      case 'PRIVMSG': case 'NOTICE': onMessage(msg); return;
      case 'JOIN': onJoin(msg); return;
      case 'PART': onPart(msg); return;
      case 'KICK': onKick(msg); return;
      case 'QUIT': onQuit(msg); return;
      case 'NICK': onNick(msg); return;
      case 'AWAY': onAway(msg); return;
      case 'TOPIC': {
        const buf = getBuffer(msg.params[0], 'channel');
        buf.topic = msg.params[1] || '';
        addLine(buf, 'topic', '', msg.nick + (buf.topic ? ' set the topic: ' + buf.topic : ' cleared the topic'), msg);
        refreshIfActive(buf);
        return;
      }
      case 'MODE': {
        const target = msg.params[0] || '';
        const text = msg.nick + ' set mode ' + msg.params.slice(1).join(' ');
        if (isChannel(target)) { const buf = getBuffer(target, 'channel'); addLine(buf, 'mode', '', text, msg); applyChannelModes(buf, msg); }
        else info(serverBuffer(), text, msg);
        return;
      }
      case 'INVITE': info(activeBuffer(), msg.nick + ' invites you to ' + msg.params[1], msg); return;
      case 'BATCH': {
        const ref = msg.params[0] || '';
        if (ref[0] === '+') state.batches.set(ref.slice(1), { type: msg.params[1] || '', params: msg.params.slice(2) });
        else state.batches.delete(ref.slice(1));
        return;
      }
      case 'FAIL': case 'WARN': case 'NOTE': onStandardReply(msg); return;
      case 'ERROR': addLine(serverBuffer(), 'error', '', msg.params[0] || 'Connection closed by the server', msg); return;
      case 'TAGMSG': case 'ACCOUNT': case 'CHGHOST': return;
      default:
        if (/^\d{3}$/.test(msg.command)) onNumeric(msg);
        else info(serverBuffer(), msg.command + ' ' + msg.params.join(' '), msg);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Outgoing: messages and /commands

  function sendMessage(buf, text, action = false) {
    if (!text) return;
    if (buf.kind === 'server') { info(buf, 'This is the server window: join a channel (/join #name) or use /msg.'); return; }
    const budget = 400 - utf8Length(buf.name) - (action ? 9 : 0);
    for (const part of splitText(clean(text), budget)) {
      const body = action ? '\x01ACTION ' + part + '\x01' : part;
      if (!send('PRIVMSG ' + buf.name + ' :' + body)) { addLine(buf, 'error', '', 'Not connected: message not sent'); return; }
      // With echo-message the server sends our own line back (with its time and msgid): show it then.
      if (!state.caps.has('echo-message')) addLine(buf, action ? 'action' : 'privmsg', state.nick, part, null);
    }
  }

  const HELP = [
    '/join #channel [key] – join a channel',
    '/part [#channel] [reason] – leave a channel',
    '/msg nick text – send a private message',
    '/query nick – open a private conversation',
    '/me action – describe an action',
    '/nick newnick – change your nickname',
    '/topic [text] – show or set the topic',
    '/notice target text – send a notice',
    '/away [message] – mark yourself away (no message: back)',
    '/whois nick – about someone',
    '/close – close this window',
    '/quote LINE – send a raw IRC line',
    '/quit [reason] – disconnect',
  ];

  function runCommand(line) {
    const buf = activeBuffer();
    const m = /^\/(\S+)\s*(.*)$/.exec(line);
    if (!m) return;
    const cmd = m[1].toLowerCase();
    const rest = m[2];
    const args = rest.split(' ').filter(Boolean);
    const argRest = (n) => rest.replace(new RegExp('^(\\S+\\s+){' + n + '}'), '');
    const channelArg = () => (args[0] && isChannel(args[0]) ? args.shift() : buf.kind === 'channel' ? buf.name : null);
    switch (cmd) {
      case 'join': case 'j': {
        if (!args[0]) { info(buf, 'Usage: /join #channel'); return; }
        const names = args[0].split(',').map((c) => (isChannel(c) ? c : '#' + c));
        state.pendingSwitch = names[0];
        const existing = state.buffers.get(fold(names[0]));
        if (existing && existing.joined) switchTo(existing.key);
        send('JOIN ' + names.join(',') + (args[1] ? ' ' + args[1] : ''));
        return;
      }
      case 'part': case 'leave': {
        const chan = channelArg();
        if (!chan) { info(buf, 'Usage: /part #channel [reason]'); return; }
        send('PART ' + chan + (args.length ? ' :' + args.join(' ') : ''));
        return;
      }
      case 'msg': case 'privmsg': {
        if (args.length < 2) { info(buf, 'Usage: /msg nick text'); return; }
        const target = getBuffer(args[0]);
        sendMessage(target, argRest(1));
        return;
      }
      case 'query': if (args[0]) openQuery(args[0]); return;
      case 'notice':
        if (args.length < 2) { info(buf, 'Usage: /notice target text'); return; }
        send('NOTICE ' + args[0] + ' :' + argRest(1));
        if (!state.caps.has('echo-message')) addLine(buf, 'notice', state.nick, args[0] + ': ' + argRest(1));
        return;
      case 'me': case 'action': sendMessage(buf, rest, true); return;
      case 'nick':
        if (!args[0]) { info(buf, 'Usage: /nick newnick'); return; }
        if (!state.registered) state.nick = args[0];
        send('NICK ' + args[0]);
        return;
      case 'topic': {
        let chan = buf.kind === 'channel' ? buf.name : null;
        let text = rest.trim();
        if (args[0] && isChannel(args[0])) { chan = args[0]; text = args.length > 1 ? argRest(1) : ''; }
        if (!chan) { info(buf, 'Usage: /topic [#channel] [text]'); return; }
        send('TOPIC ' + chan + (text ? ' :' + text : ''));
        return;
      }
      case 'away': send(rest ? 'AWAY :' + rest : 'AWAY'); return;
      case 'whois': if (args[0]) send('WHOIS ' + args[0]); return;
      case 'close': if (buf.kind !== 'server') closeBuffer(buf); return;
      case 'clear': buf.log.replaceChildren(); return;
      case 'quote': case 'raw': if (rest) send(rest); return;
      case 'quit': disconnect(rest || 'Leaving'); return;
      case 'help': for (const h of HELP) info(buf, h); return;
      default: addLine(buf, 'error', '', 'Unknown command /' + cmd + ' – try /help (or /quote to send raw IRC)');
    }
  }

  function submitInput(text) {
    if (!text.trim()) return;
    state.sent.push(text);
    if (state.sent.length > 100) state.sent.shift();
    state.sentIndex = -1;
    if (text.startsWith('/') && !text.startsWith('//')) runCommand(text);
    else sendMessage(activeBuffer(), text.startsWith('//') ? text.slice(1) : text);
  }

  // ---------------------------------------------------------------------------------------------
  // Connection, registration and reconnecting with backoff

  function setStatus(cls, text) {
    ui.status.className = 'status status-' + cls;
    ui.status.textContent = text;
  }

  function renderMe() {
    ui.me.textContent = state.nick ? 'You are ' + state.nick : '';
  }

  function wsUrl() {
    const url = new URL('ws', location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    url.search = '';
    url.hash = '';
    return url.href;
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.manualClose = false;
    state.registered = false;
    state.caps = new Set();
    state.offered = new Map();
    state.batches.clear();
    setStatus('connecting', 'connecting…');
    let ws;
    try {
      ws = new WebSocket(wsUrl(), ['text.ircv3.net']);
    } catch (e) {
      scheduleReconnect('cannot open a WebSocket: ' + e.message);
      return;
    }
    state.ws = ws;
    ws.addEventListener('open', () => {
      if (state.ws !== ws) return;
      state.capNegotiating = true;
      send('CAP LS 302');
      send('NICK ' + state.nick);
      const user = state.nick.replace(/[^A-Za-z0-9]/g, '').slice(0, 10) || 'web';
      send('USER ' + user + ' 0 * :socketkit web chat');
    });
    ws.addEventListener('message', (ev) => {
      if (state.ws !== ws || typeof ev.data !== 'string') return;
      for (const line of ev.data.split(/\r?\n/)) {
        if (!line) continue;
        try { handleLine(line); } catch (e) { console.error('chat: cannot handle', line, e); }
      }
    });
    ws.addEventListener('close', (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      const wasRegistered = state.registered;
      state.registered = false;
      ui.input.disabled = true;
      ui.send.disabled = true;
      for (const buf of state.buffers.values()) {
        if (buf.kind === 'channel') {
          if (buf.joined) info(buf, 'Disconnected');
          buf.joined = false;
          buf.members.clear();
        }
      }
      renderBufferList();
      renderNicks();
      if (state.manualClose) { setStatus('off', 'offline'); showLogin(''); return; }
      if (!wasRegistered && state.attempts === 0) state.attempts = 1;
      scheduleReconnect('connection closed' + (ev.code && ev.code !== 1000 && ev.code !== 1005 ? ' (' + ev.code + ')' : ''));
    });
  }

  function scheduleReconnect(why) {
    const delay = Math.min(30000, 1000 * 2 ** state.attempts) * (0.75 + Math.random() * 0.5);
    state.attempts = Math.min(state.attempts + 1, 6);
    const secs = Math.round(delay / 1000);
    setStatus('connecting', 'reconnecting in ' + secs + 's');
    addLine(serverBuffer(), 'error', '', why + ' – reconnecting in ' + secs + ' s');
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function disconnect(reason) {
    state.manualClose = true;
    clearTimeout(state.reconnectTimer);
    if (!send('QUIT :' + reason)) { setStatus('off', 'offline'); showLogin(''); return; }
    setTimeout(() => { if (state.ws) state.ws.close(); }, 1000);
  }

  // Reconnect at once when the page comes back online or to the foreground.
  function reconnectNow() {
    if (!state.ws && !state.manualClose && state.nick && state.reconnectTimer) {
      state.attempts = 0;
      connect();
    }
  }
  window.addEventListener('online', reconnectNow);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) reconnectNow(); });

  // ---------------------------------------------------------------------------------------------
  // Settings, login, automation report

  function loadSettings() {
    try { return JSON.parse(localStorage.getItem('socketkit-chat') || '{}') || {}; } catch (e) { return {}; }
  }

  function saveSettings() {
    try {
      localStorage.setItem('socketkit-chat', JSON.stringify({ nick: state.nick, channels: state.autojoin }));
    } catch (e) { /* private mode: settings are not kept */ }
  }

  function showLogin(error) {
    ui.login.hidden = false;
    ui.loginError.textContent = error;
    if (!ui.loginNick.value && state.nick) ui.loginNick.value = state.nick;
    ui.loginNick.focus();
  }

  function validNick(nick) {
    return /^[A-Za-z[\]\\`_^{|}][A-Za-z0-9[\]\\`_^{|}-]{0,29}$/.test(nick);
  }

  function start(nick, channels) {
    state.nick = nick;
    state.autojoin = channels;
    state.pendingSwitch = channels[0] || null;
    ui.login.hidden = true;
    serverBuffer();
    renderMe();
    connect();
  }

  let reportTimer = 0;
  function scheduleReport() {
    if (!automation.report) return;
    clearTimeout(reportTimer);
    reportTimer = setTimeout(() => {
      const buffers = {};
      for (const buf of state.buffers.values()) {
        buffers[buf.name] = [...buf.log.children].map((row) => row.textContent);
      }
      const body = JSON.stringify({
        nick: state.nick,
        active: activeBuffer().name,
        buffers,
        images: ui.log.querySelectorAll('img').length,
        elements: [...ui.log.querySelectorAll('.text *')].map((el) => el.tagName.toLowerCase()),
      });
      fetch(new URL('report', location.href), { method: 'POST', body, headers: { 'content-type': 'application/json' } })
        .catch(() => {});
    }, 150);
  }

  function isNarrow() {
    return window.matchMedia('(max-width: 760px)').matches;
  }

  // ---------------------------------------------------------------------------------------------
  // Wiring

  ui.inputForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = ui.input.value;
    ui.input.value = '';
    submitInput(text);
  });

  ui.input.addEventListener('keydown', (ev) => {
    if (ev.key === 'ArrowUp' || ev.key === 'ArrowDown') {
      if (!state.sent.length) return;
      ev.preventDefault();
      if (ev.key === 'ArrowUp') state.sentIndex = state.sentIndex < 0 ? state.sent.length - 1 : Math.max(0, state.sentIndex - 1);
      else state.sentIndex = state.sentIndex < 0 ? -1 : state.sentIndex + 1;
      if (state.sentIndex >= state.sent.length) state.sentIndex = -1;
      ui.input.value = state.sentIndex < 0 ? '' : state.sent[state.sentIndex];
    } else if (ev.key === 'Tab') {
      // Complete the nick being typed from the channel's members.
      const buf = activeBuffer();
      const value = ui.input.value.slice(0, ui.input.selectionStart);
      const m = /(\S+)$/.exec(value);
      if (!m || buf.kind !== 'channel') return;
      const word = fold(m[1]);
      const hit = [...buf.members.values()].map((x) => x.nick).filter((n) => fold(n).startsWith(word) && !isMe(n)).sort()[0];
      ev.preventDefault();
      if (!hit) return;
      const start = value.length - m[1].length;
      const suffix = start === 0 ? ': ' : ' ';
      ui.input.value = value.slice(0, start) + hit + suffix + ui.input.value.slice(value.length);
      ui.input.selectionStart = ui.input.selectionEnd = start + hit.length + suffix.length;
    }
  });

  ui.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = ui.joinName.value.trim();
    ui.joinName.value = '';
    if (!name) return;
    runCommand('/join ' + name);
    document.body.classList.remove('show-side');
  });

  ui.loginForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const nick = ui.loginNick.value.trim();
    if (!validNick(nick)) {
      ui.loginError.textContent = 'A nickname is 1–30 letters, digits or -_[]{}|^` and cannot start with a digit or -.';
      return;
    }
    const channels = ui.loginChannel.value.split(/[\s,]+/).filter(Boolean).map((c) => (isChannel(c) ? c : '#' + c));
    start(nick, channels);
  });

  function toggle(cls, button, other, otherButton) {
    const on = document.body.classList.toggle(cls);
    document.body.classList.remove(other);
    button.setAttribute('aria-expanded', String(on));
    otherButton.setAttribute('aria-expanded', 'false');
  }
  ui.toggleSide.addEventListener('click', () => toggle('show-side', ui.toggleSide, 'show-nicks', ui.toggleNicks));
  ui.toggleNicks.addEventListener('click', () => toggle('show-nicks', ui.toggleNicks, 'show-side', ui.toggleSide));
  ui.log.addEventListener('click', () => document.body.classList.remove('show-side', 'show-nicks'));

  // Start: from the query string (automation), else the login form prefilled from last time.
  const saved = loadSettings();
  const qsNick = params.get('nick');
  const qsChannels = (params.get('channel') || '').split(',').filter(Boolean);
  ui.loginNick.value = qsNick || saved.nick || '';
  if (qsChannels.length) ui.loginChannel.value = qsChannels.join(',');
  else if (Array.isArray(saved.channels) && saved.channels.length) ui.loginChannel.value = saved.channels.join(',');
  serverBuffer();
  switchTo(SERVER_KEY);
  if (params.get('autoconnect') === '1' && qsNick && validNick(qsNick)) {
    const channels = qsChannels.length ? qsChannels : ['#lobby'];
    automation.sayChannel = channels[0];
    start(qsNick, channels);
  } else {
    showLogin('');
  }
})();
