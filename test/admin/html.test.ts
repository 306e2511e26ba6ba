/**
 * Goal: nothing from the database or a request can become markup in the admin panel: every
 * interpolation is escaped, nested templates are not escaped twice, non-http(s) URLs are never
 * links, and a dead letter whose last error holds a script renders as text. Method: the html tag
 * and the page functions, called with hostile values; the output is searched for live markup.
 */
import { describe, expect, it } from 'vitest';
import { escapeHtml, externalLink, html } from '../../src/admin/html.js';
import { confirmDeadLetterPage, deadLettersPage } from '../../src/admin/pages.js';
import type { DeadLetterEntry } from '../../src/admin/dead-letter-source.js';

const HOSTILE = `<script>alert("x")</script><img src=x onerror='y'>`;

const entry: DeadLetterEntry = {
  id: '7',
  streamSequence: 12n,
  orderId: 'ord_01JD2Q7Z8X9Y0A1B2C3D4E5F6G',
  subject: 'settle.t.cmd.3',
  reason: 'NON_RETRYABLE',
  attempts: 1,
  lastError: HOSTILE,
  payload: JSON.stringify({ type: 'ExecuteOrder', note: HOSTILE }),
  state: 'OPEN',
  resolutionNote: undefined,
  createdAt: new Date('2025-01-31T12:00:00Z'),
  updatedAt: new Date('2025-01-31T12:00:00Z'),
};

describe('admin HTML escaping', () => {
  it('escapes every interpolated value but not nested templates', () => {
    const inner = html`<b>${HOSTILE}</b>`;
    const outer = html`<p title="${HOSTILE}">${inner} ${['<i>', html`<i>ok</i>`]} ${123n}</p>`;
    expect(outer.value).not.toContain('<script>');
    expect(outer.value).not.toContain("onerror='y'");
    expect(outer.value).toContain('<b>&lt;script&gt;');
    expect(outer.value).toContain('&lt;i&gt;<i>ok</i>');
    expect(outer.value).toContain('title="&lt;script&gt;alert(&quot;x&quot;)');
    expect(escapeHtml(`'"&<>\``)).toBe('&#39;&quot;&amp;&lt;&gt;&#96;');
  });

  it('links only http(s) URLs', () => {
    expect(externalLink('javascript:alert(1)').value).not.toContain('href');
    expect(externalLink('http://127.0.0.1:8081/pay/tok_1', 'hosted page').value).toContain(
      'href="http://127.0.0.1:8081/pay/tok_1"',
    );
  });

  it('renders a hostile dead letter as text on the list and the confirmation page', () => {
    const list = deadLettersPage({
      page: { entries: [entry], nextBeforeId: undefined },
      state: 'OPEN',
      canAct: true,
      isFirstPage: true,
      olderCursor: undefined,
    }).value;
    const confirm = confirmDeadLetterPage({ entry, action: 'replay', error: HOSTILE }).value;
    for (const page of [list, confirm]) {
      expect(page).not.toContain('<script>');
      expect(page).not.toContain('<img');
      expect(page).toContain('&lt;script&gt;');
    }
    expect(list).toContain('href="/admin/dead-letters/7/replay"');
    expect(confirm).toContain('data-confirm="Replay dead letter 7?"');
  });
});
