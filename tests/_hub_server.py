"""A local, offline Hugging Face Hub for tests: olah for reads plus a small stdlib server for writes.

olah (``pip install olah``, best in its own venv) serves plain git repos placed at
``<mirrors>/models/<org>/<repo>`` with the Hub's download API, but has no write API. :class:`LocalHub`
runs olah and, in front of it, an ``http.server`` that implements the Hub calls huggingface_hub's
``create_repo`` / ``create_branch`` / ``upload_folder`` make:

* ``POST /api/repos/create`` (200, 409 if the repo exists)
* ``POST /api/validate-yaml`` (the README front matter must be a YAML mapping)
* ``POST /api/models/{org}/{repo}/preupload/{rev}`` (binary files -> ``lfs``, text -> ``regular``)
* ``POST /{org}/{repo}.git/info/lfs/objects/batch`` then ``PUT /_lfs/{oid}`` (basic transfer)
* ``POST /api/models/{org}/{repo}/commit/{rev}`` (ndjson: header, file, lfsFile, deletedFile)
* ``POST /api/models/{org}/{repo}/branch/{branch}``

Commits are ordinary git commits (no LFS) made with git plumbing into olah's mirror repos, so olah
serves them at once. Every other request is proxied to olah. Clients need
``HF_ENDPOINT=hub.endpoint`` and ``HF_HUB_DISABLE_XET=1``.
"""
import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

__all__ = ['LocalHub', 'client_env', 'find_olah_cli', 'free_port']

_GIT_ENV = {'GIT_AUTHOR_NAME': 'local-hub', 'GIT_AUTHOR_EMAIL': 'hub@localhost',
            'GIT_COMMITTER_NAME': 'local-hub', 'GIT_COMMITTER_EMAIL': 'hub@localhost',
            'GIT_CONFIG_NOSYSTEM': '1', 'GIT_TERMINAL_PROMPT': '0'}
_NAME = r'[A-Za-z0-9][\w.-]*'


OLAH_VERSION = '0.5.4'
OLAH_VENV = Path(__file__).resolve().parent.parent / '.venv-olah'  # git-ignored


def find_olah_cli(install: bool = True) -> Optional[str]:
    """Path of ``olah-cli``: ``$OLAH_CLI``, PATH, or a venv of its own installed from PyPI on first use.

    olah gets its own venv because its pinned web-stack dependencies would fight the project's.
    """
    env = os.environ.get('OLAH_CLI')
    if env:
        return env if Path(env).is_file() else None
    found = shutil.which('olah-cli') or (str(OLAH_VENV / 'bin/olah-cli') if (OLAH_VENV / 'bin/olah-cli').is_file() else None)
    if found or not install:
        return found
    import sys
    subprocess.run([sys.executable, '-m', 'venv', str(OLAH_VENV)], check=True)
    for attempt in range(3):  # a package index can drop a connection: try again before failing the Hub tests
        proc = subprocess.run([str(OLAH_VENV / 'bin/pip'), 'install', '-q', f'olah=={OLAH_VERSION}'],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode == 0:
            return str(OLAH_VENV / 'bin/olah-cli')
        time.sleep(5 * (attempt + 1))
    raise RuntimeError(f'could not install olah=={OLAH_VERSION} into {OLAH_VENV} (pip exited {proc.returncode}): '
                       f'{proc.stderr.strip()[-2000:]}\nset OLAH_CLI to an installed olah-cli to run the Hub tests')


def free_port() -> int:
    """A TCP port that is free right now on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class GitStore:
    """Model repos as plain git repos under ``<mirrors>/models/<org>/<repo>``, written with plumbing."""

    def __init__(self, mirrors: Path):
        self.root = mirrors / 'models'
        self.lfs = mirrors.parent / 'lfs-objects'
        self.lfs.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.created: Dict[str, dict] = {}

    def path(self, repo_id: str) -> Path:
        return self.root / repo_id

    def exists(self, repo_id: str) -> bool:
        return (self.path(repo_id) / '.git').is_dir()

    def git(self, repo_id: str, *args: str, data: Optional[bytes] = None, env: Optional[dict] = None) -> str:
        out = subprocess.run(['git', *args], cwd=self.path(repo_id), input=data, capture_output=True,
                             env={**os.environ, **_GIT_ENV, **(env or {})}, check=True)
        return out.stdout.decode().strip()

    def head(self, repo_id: str, branch: str) -> Optional[str]:
        try:
            return self.git(repo_id, 'rev-parse', '--verify', '-q', f'refs/heads/{branch}^{{commit}}')
        except subprocess.CalledProcessError:
            return None

    def create(self, repo_id: str, payload: dict) -> bool:
        """Create the repo with an initial commit (like the Hub); False if it exists."""
        with self.lock:
            if self.exists(repo_id):
                return False
            self.path(repo_id).mkdir(parents=True)
            self.git(repo_id, 'init', '-q', '-b', 'main')
            attributes = [('file', '.gitattributes', b'*.safetensors binary\n')]
            self._commit(repo_id, 'main', 'initial commit', attributes)
            self.created[repo_id] = payload
            return True

    def branch(self, repo_id: str, branch: str, start: Optional[str]) -> Optional[str]:
        """Create ``branch`` at ``start`` (default main); None if it exists."""
        with self.lock:
            if self.head(repo_id, branch) is not None:
                return None
            sha = self.git(repo_id, 'rev-parse', '--verify', f'{start or "main"}^{{commit}}')
            self.git(repo_id, 'update-ref', f'refs/heads/{branch}', sha)
            return sha

    def commit(self, repo_id: str, branch: str, message: str, ops: List[Tuple[str, str, bytes]],
               parent: Optional[str] = None) -> str:
        with self.lock:
            return self._commit(repo_id, branch, message, ops, parent)

    def _commit(self, repo_id: str, branch: str, message: str, ops: List[Tuple[str, str, bytes]],
                expected_parent: Optional[str] = None) -> str:
        parent = self.head(repo_id, branch)
        if expected_parent and parent and not parent.startswith(expected_parent):
            raise ValueError(f'parent commit {expected_parent} is not the head of {branch} ({parent})')
        fd, index = tempfile.mkstemp(prefix='index-')
        os.close(fd)
        os.unlink(index)
        env = {'GIT_INDEX_FILE': index}
        try:
            if parent:
                self.git(repo_id, 'read-tree', parent, env=env)
            for kind, path, data in ops:
                if kind == 'file':
                    blob = self.git(repo_id, 'hash-object', '-w', '--stdin', data=data)
                    self.git(repo_id, 'update-index', '--add', '--cacheinfo', f'100644,{blob},{path}',
                             env=env)
                else:
                    self.git(repo_id, 'update-index', '--force-remove', path, env=env)
            tree = self.git(repo_id, 'write-tree', env=env)
            sha = self.git(repo_id, 'commit-tree', tree, *(['-p', parent] if parent else []), '-m', message)
            self.git(repo_id, 'update-ref', f'refs/heads/{branch}', sha)
            return sha
        finally:
            if os.path.exists(index):
                os.unlink(index)

    def lfs_path(self, oid: str) -> Path:
        return self.lfs / oid


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, with or without chunked transfer encoding."""
    if 'chunked' in handler.headers.get('Transfer-Encoding', '').lower():
        parts = []
        while True:
            size = int(handler.rfile.readline().split(b';')[0].strip() or b'0', 16)
            if size == 0:
                while handler.rfile.readline() not in (b'\r\n', b'\n', b''):
                    pass
                return b''.join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get('Content-Length') or 0))


class _Handler(BaseHTTPRequestHandler):
    """Hub write endpoints; everything else goes to olah."""

    server: 'ThreadingHTTPServer'
    protocol_version = 'HTTP/1.1'

    def log_message(self, fmt: str, *args) -> None:
        self.server.hub.log.append(f'{self.command} {self.path} -> {args[1] if len(args) > 1 else ""}')

    # ---- replies
    def _send(self, status: int, body: bytes = b'', content_type: str = 'application/json',
              headers: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[dict] = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _not_found(self, repo_id: str) -> None:
        self._json(404, {'error': f'Repository {repo_id} not found'}, {'X-Error-Code': 'RepoNotFound'})

    # ---- routing
    def do_GET(self) -> None:
        self._proxy()

    def do_HEAD(self) -> None:
        self._proxy()

    def do_PUT(self) -> None:
        m = re.fullmatch(r'/_lfs/([0-9a-f]{64})', self.path)
        if not m:
            return self._json(404, {'error': 'not found'})
        data = _read_body(self)
        if hashlib.sha256(data).hexdigest() != m.group(1):
            return self._json(400, {'error': 'sha256 mismatch'})
        self.server.hub.store.lfs_path(m.group(1)).write_bytes(data)
        self._send(200)

    def do_POST(self) -> None:
        path = self.path.split('?')[0]
        body = _read_body(self)
        routes = (
            (r'/api/repos/create', self._create_repo),
            (r'/api/validate-yaml', self._validate_yaml),
            (rf'/api/models/({_NAME}/{_NAME})/preupload/([^/]+)', self._preupload),
            (rf'/({_NAME}/{_NAME})\.git/info/lfs/objects/batch', self._lfs_batch),
            (rf'/api/models/({_NAME}/{_NAME})/commit/([^/]+)', self._commit),
            (rf'/api/models/({_NAME}/{_NAME})/branch/([^/]+)', self._branch),
        )
        for pattern, handler in routes:
            m = re.fullmatch(pattern, path)
            if m:
                return handler(body, *m.groups())
        self._json(404, {'error': f'no such endpoint {path}'})

    # ---- endpoints
    def _create_repo(self, body: bytes) -> None:
        payload = json.loads(body or b'{}')
        if payload.get('type', 'model') != 'model':
            return self._json(400, {'error': 'only model repos'})
        repo_id = f"{payload.get('organization')}/{payload['name']}"
        url = f'{self.server.hub.endpoint}/{repo_id}'
        if not self.server.hub.store.create(repo_id, payload):
            return self._json(409, {'error': 'You already created this model repo', 'url': url})
        self._json(200, {'url': url, 'name': repo_id})

    def _validate_yaml(self, body: bytes) -> None:
        content = json.loads(body).get('content', '')
        m = re.match(r'---\n(.*?)\n---\n', content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else None
        except yaml.YAMLError as e:
            return self._json(400, {'errors': [{'message': f'invalid YAML: {e}'}]})
        if not isinstance(meta, dict):
            return self._json(400, {'errors': [{'message': 'README front matter must be a YAML mapping'}]})
        self._json(200, {'errors': [], 'warnings': []})

    def _preupload(self, body: bytes, repo_id: str, rev: str) -> None:
        store = self.server.hub.store
        if not store.exists(repo_id):
            return self._not_found(repo_id)
        files = []
        for f in json.loads(body)['files']:
            binary = b'\0' in base64.b64decode(f['sample']) or f['path'].endswith('.safetensors')
            files.append({'path': f['path'], 'uploadMode': 'lfs' if binary else 'regular',
                          'shouldIgnore': False})
        self._json(200, {'files': files, 'commitOid': store.head(repo_id, rev)})

    def _lfs_batch(self, body: bytes, repo_id: str) -> None:
        if not self.server.hub.store.exists(repo_id):
            return self._not_found(repo_id)
        objects = []
        for obj in json.loads(body)['objects']:
            entry = {'oid': obj['oid'], 'size': obj['size'], 'authenticated': True}
            stored = self.server.hub.store.lfs_path(obj['oid'])
            if not (stored.is_file() and stored.stat().st_size == obj['size']):
                entry['actions'] = {'upload': {'href': f"{self.server.hub.endpoint}/_lfs/{obj['oid']}"}}
            objects.append(entry)
        self._json(200, {'transfer': 'basic', 'objects': objects})

    def _commit(self, body: bytes, repo_id: str, rev: str) -> None:
        store = self.server.hub.store
        branch = rev.replace('%2F', '/')
        if not store.exists(repo_id):
            return self._not_found(repo_id)
        if store.head(repo_id, branch) is None:
            return self._json(404, {'error': f'Invalid rev id: {branch}'},
                              {'X-Error-Code': 'RevisionNotFound'})
        header, ops = {}, []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item['key'], item['value']
            if key == 'header':
                header = value
            elif key == 'file':
                ops.append(('file', value['path'], base64.b64decode(value['content'])))
            elif key == 'lfsFile':
                stored = store.lfs_path(value['oid'])
                if not stored.is_file():
                    return self._json(400, {'error': f"LFS object {value['oid']} was not uploaded"})
                ops.append(('file', value['path'], stored.read_bytes()))
            elif key == 'deletedFile':
                ops.append(('delete', value['path'], b''))
            else:
                return self._json(400, {'error': f'unsupported commit operation {key}'})
        message = header.get('summary') or 'commit'
        if header.get('description'):
            message += '\n\n' + header['description']
        try:
            sha = store.commit(repo_id, branch, message, ops, header.get('parentCommit'))
        except ValueError as e:
            return self._json(412, {'error': str(e)})
        self.server.hub.commits.append((repo_id, branch, sha))
        self._json(200, {'success': True, 'commitOid': sha, 'pullRequestUrl': None,
                         'commitUrl': f'{self.server.hub.endpoint}/{repo_id}/commit/{sha}'})

    def _branch(self, body: bytes, repo_id: str, branch: str) -> None:
        store = self.server.hub.store
        if not store.exists(repo_id):
            return self._not_found(repo_id)
        start = json.loads(body or b'{}').get('startingPoint')
        if store.branch(repo_id, branch.replace('%2F', '/'), start) is None:
            return self._json(409, {'error': f'Reference {branch} already exists'})
        self._json(200, {})

    # ---- reads
    def _proxy(self) -> None:
        hub = self.server.hub
        conn = http.client.HTTPConnection('127.0.0.1', hub.olah_port, timeout=60)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ('host', 'connection', 'accept-encoding', 'keep-alive')}
        try:
            conn.request(self.command, self.path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        olah = f'127.0.0.1:{hub.olah_port}'
        ours = hub.endpoint.split('//', 1)[1]
        for k, v in resp.getheaders():
            if k.lower() in ('transfer-encoding', 'connection', 'content-length', 'date', 'server'):
                continue
            self.send_header(k, v.replace(olah, ours) if k.lower() == 'location' else v)
        length = resp.getheader('Content-Length') if self.command == 'HEAD' else None
        self.send_header('Content-Length', length or str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)


class LocalHub:
    """olah on a free port plus the write server in a thread; ``endpoint`` is the HF_ENDPOINT to use."""

    def __init__(self, root: Path, olah_cli: str):
        self.root = Path(root)
        self.olah_cli = olah_cli
        self.mirrors = self.root / 'mirrors'
        self.store = GitStore(self.mirrors)
        self.olah_port = free_port()
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
        self.server.daemon_threads = True
        self.server.hub = self
        self.endpoint = f'http://127.0.0.1:{self.server.server_address[1]}'
        self.log: List[str] = []
        self.commits: List[Tuple[str, str, str]] = []
        self._olah: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None

    def _write_config(self) -> Path:
        (self.root / 'repos').mkdir(parents=True, exist_ok=True)
        (self.root / 'logs').mkdir(parents=True, exist_ok=True)
        netloc = f'127.0.0.1:{self.olah_port}'
        cfg = self.root / 'olah.toml'
        cfg.write_text(
            '[basic]\nhost = "127.0.0.1"\n'
            f'port = {self.olah_port}\n'
            f'repos-path = "{self.root / "repos"}"\n'
            f'mirrors-path = ["{self.mirrors}"]\n'
            'mirror-scheme = "http"\n'
            f'mirror-netloc = "{netloc}"\nmirror-lfs-netloc = "{netloc}"\n'
            '[accessibility]\noffline = true\n')
        return cfg

    def start(self, timeout: float = 60.0) -> 'LocalHub':
        """Start olah and the write server; wait until a probe repo is served."""
        cfg = self._write_config()
        self.store.create('local-hub/ready', {})
        log = (self.root / 'olah.out').open('wb')
        self._olah = subprocess.Popen([self.olah_cli, '-c', str(cfg), '--log-path', str(self.root / 'logs')],
                                      stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._olah.poll() is not None:
                raise RuntimeError(f'olah exited with {self._olah.returncode}: '
                                   f"{(self.root / 'olah.out').read_text()[-2000:]}")
            if self._probe():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f'olah did not come up in {timeout:.0f} s')

    def _probe(self) -> bool:
        try:
            conn = http.client.HTTPConnection('127.0.0.1', self.olah_port, timeout=2)
            conn.request('GET', '/api/models/local-hub/ready/revision/main')
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the write server and olah (the olah process this hub started, by its pid)."""
        self.server.shutdown()
        self.server.server_close()
        if self._olah is not None and self._olah.poll() is None:
            self._olah.terminate()
            try:
                self._olah.wait(10)
            except subprocess.TimeoutExpired:
                self._olah.kill()
                self._olah.wait(10)

    def env(self, hf_home: Path, **extra: str) -> Dict[str, str]:
        """Environment for a client process that talks to this hub."""
        return client_env(self.endpoint, hf_home, **extra)


def client_env(endpoint: str, hf_home: Path, **extra: str) -> Dict[str, str]:
    """Environment for a Hub client process: online, this endpoint, its own HF_HOME, no Xet."""
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_OFFLINE='0',
               HF_HUB_DISABLE_XET='1', HF_HUB_DISABLE_PROGRESS_BARS='1', HF_HUB_DISABLE_TELEMETRY='1',
               OMP_NUM_THREADS='1')
    env.pop('HF_TOKEN', None)
    env.update(extra)
    return env
