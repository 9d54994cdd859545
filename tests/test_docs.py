"""The docs site (tools/build-docs) in a real browser: headless Chromium opens every page, served over HTTP.

Every notebook has its page, in reading order in every sidebar; no image fails to load, no link inside the site
leads nowhere (a missing page or a missing #anchor), nothing is fetched from outside and the console shows no
error. Skipped, with the reason, where Chromium, its driver or selenium is missing (Debian: `apt-get install
chromium chromium-driver`; selenium comes with the dev extra). DOCS_SCREENSHOTS=DIR keeps a screenshot of every page.
"""
import functools, http.server, os, re, shutil, subprocess, sys, threading, tomllib
from pathlib import Path
from urllib.parse import urldefrag, urlparse
import pytest
from conftest import ROOT

CHROMIUM = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome'))), None)
DRIVER = shutil.which('chromedriver')
FLAGS = ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-dev-shm-usage',
         '--disable-background-networking', '--disable-component-update', '--disable-sync', '--window-size=1280,900')

def expected_pages():
    "Reading order: the home page (nbs/index.ipynb), the tutorials, the numbered notebooks; named as nbdev names them"
    from nbdev.config import nbpath2html
    nbs = ROOT/'nbs'
    order = [nbs/'index.ipynb', *sorted((nbs/'tutorials').glob('*.ipynb')),
             *sorted(f for f in nbs.glob('*.ipynb') if f.name != 'index.ipynb' and not f.name.startswith(('_', '.')))]
    return [nbpath2html(f.relative_to(nbs)).as_posix() for f in order]

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The site built by the documented command, served on localhost"
    out = tmp_path_factory.mktemp('site')/'_docs'
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'build-docs'), '--out', str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    handler = functools.partial(Quiet, directory=str(out))
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield out, f'http://127.0.0.1:{srv.server_address[1]}/'
    srv.shutdown()

def test_every_notebook_has_a_page(site):
    out, _ = site
    built = sorted(p.relative_to(out).as_posix() for p in out.rglob('*.html'))
    assert built == sorted(expected_pages())

def test_docs_links_in_modules_point_at_pages(site):
    "nbdev writes `Docs: URL` into each module from [project.urls] Documentation: each must name a page of the build"
    out, _ = site
    doc_url = tomllib.loads((ROOT/'pyproject.toml').read_text())['project'].get('urls', {}).get('Documentation', '')
    for py in (ROOT/'fast_resnet').glob('*.py'):
        for url in re.findall(r'^Docs: ([^\s"]+)', py.read_text(), re.M):
            assert doc_url and url.startswith(doc_url), (py.name, url)
            assert (out/url[len(doc_url):].lstrip('/')).is_file(), f'{py.name}: {url} is not a page of the build'

def test_api_entries(site):
    """Every exported public function and class has nbdev's show_doc entry on its page: the name as a heading at nbdev's
    anchor, the signature, a source link into the repository; the exported code folded under it, never shown raw"""
    from fast_resnet._modidx import d
    out, _ = site
    missing, pages = [], {}
    for mod, syms in d['syms'].items():
        for sym, (url, _) in syms.items():
            page, _, frag = url.partition('#')
            name = sym[len(mod) + 1:]
            if '.' in name or name.startswith('_'): continue  # methods and private names get no entry of their own
            html = pages.setdefault(page, (out/page).read_text(encoding='utf-8'))
            i = html.find(f'<h3 id="{frag}">')
            start = html.rfind('<div class="jp-RenderedHTMLCommon sd-entry">', 0, i)
            if i < 0 or start < 0 or '<h3' in html[start:i]: missing.append(f'{page}#{frag} ({sym})'); continue
            if 'class="sd-source" href="https://' not in html[start:i]: missing.append(f'{page}#{frag}: no source link')
            if '<div class="highlight"><pre>' not in html[i:html.find('</div>', i) + 300]: missing.append(f'{page}#{frag}: no signature')
    assert not missing, 'no show_doc entry for:\n' + '\n'.join(missing)
    learner = pages['learner.html']
    for page in ('learner.html', 'recorder.html'):  # each exported cell of the two pages folded
        assert pages[page].count('<details class="sd-code"><summary>Exported source</summary>') >= 2, page
    # the exported code is only inside the folds: no code cell on the page starts with a class of the module
    assert not re.search(r'class="jp-InputArea[^"]*".{0,2000}?class</span><span class="w"> </span><span class="nc">CifarLearner', learner, re.S)
    # a parameter table from the `# comment` docments (fastcore's DocmentTbl), under the signature
    assert re.search(r'<h3 id="cifarlearner">(?:(?!<h3).)*<th><strong>Details</strong></th>', learner, re.S)

@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    if not CHROMIUM: pytest.skip('Chromium is not installed (Debian: apt-get install chromium chromium-driver)')
    if not DRIVER: pytest.skip('chromedriver is not installed (Debian: apt-get install chromium-driver)')
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed: pip install -e ".[dev]"')
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS: opts.add_argument(f)
    opts.add_argument(f'--user-data-dir={tmp_path_factory.mktemp("chromium-profile")}')
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(options=opts, service=Service(DRIVER))
    d.set_page_load_timeout(60)
    yield d
    d.quit()

PAGE_JS = """return {
  broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 120)),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  sidebar: [...document.querySelectorAll('nav.site-sidebar li a')].map(a => a.getAttribute('href')),
  current: [...document.querySelectorAll('nav.site-sidebar a.current')].map(a => a.getAttribute('href')),
  ids: [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.name),
  external: performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith(location.origin) && !n.startsWith('data:')),
  title: document.title, text: document.body.innerText.length,
}"""

def test_pages_in_chromium(site, browser):
    out, base = site
    pages, seen, problems = expected_pages(), {}, []
    shots = os.environ.get('DOCS_SCREENSHOTS')
    for page in pages:
        browser.get(base + page)
        r = browser.execute_script(PAGE_JS)
        seen[page] = r
        if shots: Path(shots).mkdir(parents=True, exist_ok=True); browser.save_screenshot(str(Path(shots)/(page.replace('/', '_') + '.png')))
        errors = [e['message'] for e in browser.get_log('browser') if e['level'] == 'SEVERE']
        problems += [f'{page}: console error: {m}' for m in errors]
        problems += [f'{page}: broken image {s}' for s in r['broken']]
        problems += [f'{page}: fetched from outside the site: {u}' for u in r['external']]
        if r['text'] < 200: problems.append(f'{page}: almost empty ({r["text"]} characters)')
        # the same sidebar everywhere, in reading order, marking the page itself
        side = [urlparse(browser.execute_script('return new URL(arguments[0], location.href).href', h)).path.lstrip('/') for h in r['sidebar']]
        if side != pages: problems.append(f'{page}: sidebar {side} is not {pages}')
        if len(r['current']) != 1: problems.append(f'{page}: {len(r["current"])} sidebar entries marked current')
    for page, r in seen.items():
        for link in r['links']:
            target, frag = urldefrag(link)
            if not target.startswith(base): continue  # outside links (arXiv, the repository) cannot be checked offline
            path = urlparse(target).path.lstrip('/')
            if path in seen:
                if frag and frag not in seen[path]['ids']: problems.append(f'{page}: link to a missing anchor {path}#{frag}')
            elif not (out/path).is_file(): problems.append(f'{page}: broken link {link}')
    assert not problems, '\n'.join(problems)
