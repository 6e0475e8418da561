// The desktop viewer: noVNC's RFB on socketkit's bridge, at websockify?token=... next to this page.
// The token comes in the URL's fragment (#token=..., never sent to a server) or query (?token=...); it is
// then taken out of the address bar and kept for this tab only, so a screen share does not show it.
import RFB from './novnc/core/rfb.js';

const $ = (id) => document.getElementById(id);
const status = $('status');

function say(text, kind) {
    status.textContent = text;
    status.className = kind || '';
}

function takeToken() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const query = new URLSearchParams(location.search);
    const token = fragment.get('token') || query.get('token');
    if (token) {
        sessionStorage.setItem('socketkit-desktop-token', token);
        history.replaceState(null, '', location.pathname);
        return token;
    }
    return sessionStorage.getItem('socketkit-desktop-token') || '';
}

function bridgeURL(token) {
    const url = new URL('websockify', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.hash = '';
    url.search = '?token=' + encodeURIComponent(token);
    return url.href;
}

const token = takeToken();
let rfb = null;

function connect() {
    $('reconnect').hidden = true;
    if (!token) {
        say('no token: open the URL socketkit printed (it ends in #token=...)', 'bad');
        return;
    }
    say('connecting…');
    rfb = new RFB($('screen'), bridgeURL(token), { shared: true });
    rfb.scaleViewport = $('scale').checked;
    rfb.resizeSession = false;
    rfb.focusOnClick = true;
    rfb.addEventListener('connect', () => {
        say('connected', 'ok');
        $('cad').disabled = false;
        $('login').hidden = true;
        rfb.focus();
    });
    rfb.addEventListener('disconnect', (e) => {
        say(e.detail.clean ? 'disconnected' : 'connection lost (wrong token, or the VNC server is gone)', 'bad');
        $('cad').disabled = true;
        $('reconnect').hidden = false;
        rfb = null;
    });
    rfb.addEventListener('securityfailure', (e) => {
        say('refused by the VNC server: ' + (e.detail.reason || 'authentication failed'), 'bad');
    });
    rfb.addEventListener('credentialsrequired', (e) => {
        const types = e.detail.types || [];
        $('userrow').hidden = !types.includes('username');
        $('login').hidden = false;
        $(types.includes('username') ? 'user' : 'password').focus();
        say('the VNC server asks for a password');
    });
    rfb.addEventListener('desktopname', (e) => { $('name').textContent = e.detail.name; document.title = e.detail.name + ' · socketkit'; });
    rfb.addEventListener('clipboard', (e) => { $('cliptext').value = e.detail.text; });
}

$('login').addEventListener('submit', (e) => {
    e.preventDefault();
    if (!rfb) return;
    const creds = { password: $('password').value };
    if (!$('userrow').hidden) creds.username = $('user').value;
    $('password').value = '';
    rfb.sendCredentials(creds);
    $('login').hidden = true;
});
$('cad').addEventListener('click', () => { if (rfb) { rfb.sendCtrlAltDel(); rfb.focus(); } });
$('scale').addEventListener('change', () => { if (rfb) rfb.scaleViewport = $('scale').checked; });
$('clip').addEventListener('click', () => {
    const panel = $('clipboard');
    panel.hidden = !panel.hidden;
    $('clip').setAttribute('aria-expanded', String(!panel.hidden));
});
$('clipsend').addEventListener('click', () => { if (rfb) { rfb.clipboardPasteFrom($('cliptext').value); rfb.focus(); } });
$('full').addEventListener('click', () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else document.documentElement.requestFullscreen().catch(() => say('full screen was refused by the browser', 'bad'));
});
$('reconnect').addEventListener('click', connect);

connect();
