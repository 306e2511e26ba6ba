/**
 * The admin panel's only static files, served from memory: a stylesheet and a script that asks
 * for confirmation before a destructive form is submitted (forms with `data-confirm`). Both are
 * plain text that browsers use as they are: no build step.
 */
export const ADMIN_CSS = `
:root { --fg: #1d2330; --muted: #6b7280; --line: #e3e6ea; --bg: #f7f8fa; --accent: #2457c5;
  --ok: #17803d; --warn: #a15c00; --bad: #b42318; font-family: system-ui, sans-serif; font-size: 14px; }
body { margin: 0; color: var(--fg); background: var(--bg); }
header { display: flex; gap: 1.5rem; align-items: center; padding: .6rem 1.2rem; background: #1d2330; color: #fff; }
header a { color: #dfe6f3; text-decoration: none; }
header a.active, header a:hover { color: #fff; text-decoration: underline; }
header nav { display: flex; gap: 1rem; flex: 1; }
.brand { font-weight: 700; color: #fff; }
.who { display: flex; gap: .6rem; align-items: center; }
main { padding: 1rem 1.2rem; max-width: 1400px; }
h1 { font-size: 1.4rem; margin: .2rem 0 1rem; }
h2 { font-size: 1.1rem; margin: 1.4rem 0 .5rem; }
footer { padding: 1rem 1.2rem; color: var(--muted); font-size: 12px; }
a { color: var(--accent); }
table.list { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
table.list th, table.list td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
table.list thead th { background: #eef1f5; font-weight: 600; }
.num { text-align: right !important; font-variant-numeric: tabular-nums; white-space: nowrap; }
.mono, pre { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
pre { margin: 0; white-space: pre-wrap; word-break: break-all; max-width: 60ch; }
.small { font-size: 11px; }
.muted { color: var(--muted); }
.bad, .error-text { color: var(--bad); }
.good { color: var(--ok); }
.flash { background: #e8f3ec; border: 1px solid #b7dcc3; padding: .5rem .8rem; }
.state { display: inline-block; padding: 0 .4rem; border-radius: 3px; font-size: 12px; font-weight: 600; background: #e8ebf0; }
.state-succeeded, .state-ok, .state-closed, .state-replayed { background: #dcf2e3; color: var(--ok); }
.state-failed, .state-expired, .state-open, .state-dead-lettered { background: #fbe3e1; color: var(--bad); }
.state-executing, .state-half_open, .state-partially_succeeded { background: #fdf0d5; color: var(--warn); }
.state-discarded { background: #e8ebf0; color: var(--muted); }
form.filters { display: flex; flex-wrap: wrap; gap: .6rem; align-items: flex-end; margin-bottom: 1rem; }
form.filters label, form label { display: flex; flex-direction: column; gap: .2rem; font-size: 12px; color: var(--muted); }
input, select, textarea { font: inherit; padding: .3rem .4rem; border: 1px solid #c7ccd4; border-radius: 3px; }
textarea { width: min(40rem, 100%); }
button, a.button { font: inherit; padding: .35rem .8rem; border-radius: 3px; border: 1px solid var(--accent);
  background: var(--accent); color: #fff; cursor: pointer; text-decoration: none; display: inline-block; }
button.danger, a.button.danger { background: var(--bad); border-color: var(--bad); }
button.link { background: none; border: none; color: #dfe6f3; padding: 0; text-decoration: underline; }
form.inline { display: inline; }
.pager { display: flex; gap: 1rem; }
.tabs { display: flex; gap: .8rem; }
.tabs a.active { font-weight: 700; text-decoration: none; color: var(--fg); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; }
.summary { background: #fff; border: 1px solid var(--line); padding: .8rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 1rem; }
.card { background: #fff; border: 1px solid var(--line); padding: .6rem .9rem; }
.card h2 { margin-top: .2rem; }
ul.findings { list-style: none; padding: 0; margin: 0; }
ul.findings li { padding: .4rem .6rem; margin-bottom: .3rem; border-left: 4px solid var(--line); background: #fff; }
.finding-error { border-color: var(--bad) !important; }
.finding-warn { border-color: var(--warn) !important; }
.finding-ok { border-color: var(--ok) !important; }
.timeline tr.kind-webhook td:first-child, .timeline tr.kind-psp td:first-child { border-left: 3px solid var(--accent); }
.timeline tr.kind-dead-letter td:first-child { border-left: 3px solid var(--bad); }
.timeline tr.kind-admin td:first-child { border-left: 3px solid var(--warn); }
.stub { background: #fff; border: 1px dashed #c7ccd4; padding: .8rem 1rem; max-width: 60rem; }
.scroll { overflow-x: auto; }
.timeline td:first-child, td.actions, td.time { white-space: nowrap; }
body.login main { max-width: 24rem; margin: 4rem auto; background: #fff; border: 1px solid var(--line); padding: 1.5rem; }
body.login form { display: flex; flex-direction: column; gap: .8rem; }
`;

export const ADMIN_JS = `
'use strict';
document.addEventListener('submit', function (event) {
  var form = event.target;
  var question = form && form.getAttribute && form.getAttribute('data-confirm');
  if (question && !window.confirm(question)) event.preventDefault();
});
`;
