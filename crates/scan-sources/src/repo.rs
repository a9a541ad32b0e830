//! Git history through gix: every blob reachable from any ref, once, with the oldest commit
//! that holds it.
//!
//! 1. Tips: every ref (peeled through tags) and `HEAD`. Commits start the graph; trees and blobs
//!    that a tag points at directly are scanned last, without a commit.
//! 2. The commit graph: every commit reachable from the tips, read once.
//! 3. Order: oldest first by committer time, a commit always after its parents (Kahn's
//!    topological sort, taking the oldest ready commit first; ties broken by id).
//! 4. For each commit in that order, its tree is walked, skipping every tree already seen (all
//!    its blobs were handed over with an older commit); each blob not yet seen goes to a worker
//!    with this commit and its path. Workers (`threads` of them, each with its own repository
//!    handle) read the blobs and call the sink, in whatever order they finish.
//!
//! Memory: the commit graph, and the ids of every tree and blob seen. A blob is inflated whole
//! by the object database (as `git` does), one per worker at a time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use gix::ObjectId;
use gix::hashtable::HashSet;
use gix::objs::Kind;

use crate::gz::{CappedGunzip, is_gzip_magic};
use crate::{Counters, Origin, Sink, SourceError, Stats, WalkOptions};

/// Delta-base cache per repository handle: history reads resolve long delta chains.
const PACK_CACHE_BYTES: usize = 64 << 20;
/// Blobs queued for the workers at most.
const QUEUE: usize = 1024;

pub(crate) fn git(path: &Path, opts: &WalkOptions, sink: &dyn Sink) -> Result<Stats, SourceError> {
    let repo = open(path)?;
    let counters = Counters::default();
    let (commit_tips, other_tips) = tips(&repo, &counters, sink)?;
    let graph = Graph::collect(&repo, commit_tips, &counters, sink);
    let order = graph.oldest_first();
    Counters::bump_by(&counters.commits, order.len() as u64);

    let workers = opts.effective_threads().max(1);
    let max_gunzip = opts.max_gunzip_bytes;
    let (tx, rx) = sync_channel::<Job>(QUEUE);
    let rx = Mutex::new(rx);
    let graph = &graph;
    let counters_ref = &counters;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let rx = &rx;
            scope.spawn(move || worker(path, rx, graph, max_gunzip, counters_ref, sink));
        }
        let mut walker = TreeWalker {
            repo: &repo,
            tx,
            seen_trees: HashSet::default(),
            seen_blobs: HashSet::default(),
            counters: counters_ref,
            sink,
        };
        for &commit in &order {
            let Some(node) = graph.nodes.get(commit as usize) else {
                continue;
            };
            if !walker.tree(node.tree, Some(commit), String::new()) {
                return;
            }
        }
        for (name, id, kind) in other_tips {
            let more = match kind {
                Kind::Tree => walker.tree(id, None, String::new()),
                _ => walker.blob(id, None, name),
            };
            if !more {
                return;
            }
        }
        // Dropping the walker closes the queue: the workers finish what is left and stop.
    });
    Ok(counters.stats())
}

/// Opens the repository (gix without its `parallel` feature: one handle per thread, each opened
/// on its own) with a delta-base cache, reading no global git configuration.
fn open(path: &Path) -> Result<gix::Repository, SourceError> {
    let mut repo =
        gix::open_opts(path, gix::open::Options::isolated()).map_err(|e| SourceError::GitOpen {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    repo.objects.set_pack_cache(|| {
        Box::new(gix::odb::pack::cache::lru::MemoryCappedHashmap::new(
            PACK_CACHE_BYTES,
        ))
    });
    repo.objects.unset_object_cache();
    Ok(repo)
}

fn git_error(what: impl Into<String>, err: &gix::Error) -> SourceError {
    SourceError::Git {
        what: what.into(),
        message: err.to_string(),
    }
}

/// Commits the refs point at; trees and blobs that tags point at (with the ref's name).
type Tips = (Vec<ObjectId>, Vec<(String, ObjectId, Kind)>);

fn tips(repo: &gix::Repository, counters: &Counters, sink: &dyn Sink) -> Result<Tips, SourceError> {
    let mut commits = Vec::new();
    let mut others = Vec::new();
    let mut add = |name: String, id: ObjectId| match repo.find_header(id) {
        Ok(header) => match header.kind() {
            Kind::Commit => commits.push(id),
            kind @ (Kind::Tree | Kind::Blob) => {
                if !others.iter().any(|(_, o, _)| *o == id) {
                    others.push((name, id, kind));
                }
            }
            Kind::Tag => {}
        },
        Err(err) => counters.error(sink, &name, &git_error(format!("ref {name}"), &err)),
    };
    let platform = repo.references().map_err(|e| git_error("refs", &e))?;
    let all = platform.all().map_err(|e| git_error("refs", &e))?;
    for reference in all {
        match reference {
            Ok(mut reference) => {
                let name = reference.name().as_bstr().to_string();
                match reference.peel_to_id() {
                    Ok(id) => add(name, id.detach()),
                    Err(err) => {
                        counters.error(sink, &name, &git_error(format!("ref {name}"), &err));
                    }
                }
            }
            Err(err) => counters.error(sink, "refs", &git_error("refs", &err)),
        }
    }
    // A detached HEAD is no ref; an unborn one (empty repository) has nothing to scan.
    if let Ok(head) = repo.head_id() {
        add("HEAD".to_owned(), head.detach());
    }
    Ok((commits, others))
}

/// One commit of the graph.
struct Node {
    id: ObjectId,
    time: i64,
    tree: ObjectId,
    parents: Vec<u32>,
}

/// Every commit reachable from the tips.
struct Graph {
    nodes: Vec<Node>,
}

impl Graph {
    fn collect(
        repo: &gix::Repository,
        tips: Vec<ObjectId>,
        counters: &Counters,
        sink: &dyn Sink,
    ) -> Self {
        // A shallow clone's boundary commits name parents that are not there: not an error.
        let shallow = repo.is_shallow().unwrap_or(false);
        let mut index: HashMap<ObjectId, u32> = HashMap::new();
        let mut nodes = Vec::new();
        let mut raw_parents: Vec<Vec<ObjectId>> = Vec::new();
        let mut pending = tips;
        while let Some(id) = pending.pop() {
            if index.contains_key(&id) {
                continue;
            }
            let commit = match repo.find_commit(id) {
                Ok(commit) => commit,
                Err(err) => {
                    if !(shallow && err.is_not_found()) {
                        let what = format!("commit {id}");
                        counters.error(sink, &what, &git_error(what.clone(), &err));
                    }
                    continue;
                }
            };
            let tree = match commit.tree_id() {
                Ok(tree) => tree.detach(),
                Err(err) => {
                    let what = format!("commit {id}");
                    counters.error(sink, &what, &git_error(what.clone(), &err));
                    continue;
                }
            };
            let time = commit.time().map_or(0, |t| t.seconds);
            let parents: Vec<ObjectId> = commit.parent_ids().map(|p| p.detach()).collect();
            pending.extend(parents.iter().copied());
            let Ok(at) = u32::try_from(nodes.len()) else {
                break;
            };
            index.insert(id, at);
            nodes.push(Node {
                id,
                time,
                tree,
                parents: Vec::new(),
            });
            raw_parents.push(parents);
        }
        for (node, parents) in nodes.iter_mut().zip(raw_parents) {
            for parent in parents {
                if let Some(&p) = index.get(&parent)
                    && !node.parents.contains(&p)
                {
                    node.parents.push(p);
                }
            }
        }
        Self { nodes }
    }

    /// Indexes of the commits, oldest first, every commit after its parents.
    fn oldest_first(&self) -> Vec<u32> {
        let n = self.nodes.len();
        let mut children: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut waiting: Vec<usize> = Vec::with_capacity(n);
        let mut ready = BinaryHeap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            waiting.push(node.parents.len());
            for &p in &node.parents {
                if let Some(c) = children.get_mut(p as usize) {
                    c.push(i as u32);
                }
            }
            if node.parents.is_empty() {
                ready.push(Reverse((node.time, node.id, i as u32)));
            }
        }
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse((_, _, i))) = ready.pop() {
            order.push(i);
            for &c in children.get(i as usize).map_or(&[][..], |c| &c[..]) {
                if let (Some(w), Some(node)) =
                    (waiting.get_mut(c as usize), self.nodes.get(c as usize))
                {
                    *w -= 1;
                    if *w == 0 {
                        ready.push(Reverse((node.time, node.id, c)));
                    }
                }
            }
        }
        order
    }

    fn commit_hex(&self, commit: Option<u32>) -> Option<String> {
        commit
            .and_then(|c| self.nodes.get(c as usize))
            .map(|n| n.id.to_string())
    }
}

/// A blob for a worker: its id, the commit that introduces it, its path there.
struct Job {
    blob: ObjectId,
    commit: Option<u32>,
    path: String,
}

/// Walks trees, each once, queueing each blob once.
struct TreeWalker<'a> {
    repo: &'a gix::Repository,
    tx: SyncSender<Job>,
    seen_trees: HashSet<ObjectId>,
    seen_blobs: HashSet<ObjectId>,
    counters: &'a Counters,
    sink: &'a dyn Sink,
}

impl TreeWalker<'_> {
    /// Queues the unseen blobs under the tree `root`; false when the workers are gone.
    fn tree(&mut self, root: ObjectId, commit: Option<u32>, prefix: String) -> bool {
        let mut stack = vec![(root, prefix)];
        while let Some((id, prefix)) = stack.pop() {
            if !self.seen_trees.insert(id) {
                continue;
            }
            let tree = match self.repo.find_tree(id) {
                Ok(tree) => tree,
                Err(err) => {
                    self.tree_error(id, &prefix, &err);
                    continue;
                }
            };
            let decoded = match tree.decode() {
                Ok(decoded) => decoded,
                Err(err) => {
                    self.tree_error(id, &prefix, &err);
                    continue;
                }
            };
            // Pushed in reverse so that entries come out in tree order.
            for entry in decoded.entries.iter().rev() {
                let mode = entry.mode;
                if !(mode.is_tree() || mode.is_blob()) {
                    // Submodules (commits) and symbolic links (a path, no content).
                    continue;
                }
                let mut path = String::with_capacity(prefix.len() + 1 + entry.filename.len());
                path.push_str(&prefix);
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(&String::from_utf8_lossy(entry.filename));
                if mode.is_tree() {
                    stack.push((entry.oid.to_owned(), path));
                } else if !self.blob(entry.oid.to_owned(), commit, path) {
                    return false;
                }
            }
        }
        true
    }

    /// Queues a blob unless seen; false when the workers are gone.
    fn blob(&mut self, blob: ObjectId, commit: Option<u32>, path: String) -> bool {
        if !self.seen_blobs.insert(blob) {
            return true;
        }
        self.tx.send(Job { blob, commit, path }).is_ok()
    }

    fn tree_error(&self, id: ObjectId, prefix: &str, err: &gix::Error) {
        let what = if prefix.is_empty() {
            format!("tree {id}")
        } else {
            format!("tree {id} ({prefix})")
        };
        self.counters
            .error(self.sink, &what, &git_error(what.clone(), err));
    }
}

fn worker(
    path: &Path,
    rx: &Mutex<Receiver<Job>>,
    graph: &Graph,
    max_gunzip: u64,
    counters: &Counters,
    sink: &dyn Sink,
) {
    let repo = match open(path) {
        Ok(repo) => repo,
        Err(err) => {
            counters.error(sink, &path.display().to_string(), &err);
            return;
        }
    };
    loop {
        let job = {
            let Ok(rx) = rx.lock() else {
                return;
            };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let commit = graph.commit_hex(job.commit);
        let what = match &commit {
            Some(c) => format!("{c}:{}", job.path),
            None => job.path.clone(),
        };
        let object = match repo.find_object(job.blob) {
            Ok(object) if object.kind == Kind::Blob => object,
            Ok(object) => {
                let err = SourceError::Git {
                    what: format!("blob {}", job.blob),
                    message: format!("is a {}, not a blob", object.kind),
                };
                counters.error(sink, &what, &err);
                continue;
            }
            Err(err) => {
                counters.error(sink, &what, &git_error(format!("blob {}", job.blob), &err));
                continue;
            }
        };
        let origin = Origin {
            path: job.path,
            commit,
            layer: None,
        };
        let data = &object.data[..];
        if is_gzip_magic(data) {
            counters.hand(
                sink,
                &origin,
                &what,
                &mut CappedGunzip::new(data, max_gunzip),
            );
        } else {
            counters.hand(sink, &origin, &what, &mut &*data);
        }
    }
}
