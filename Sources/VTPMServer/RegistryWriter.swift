import Dispatch
import Logging
import Registry
import Synchronization
import VMIdentity
import _VTPMPosix

/// The registry writes vtpmd makes while the guest runs (a checkpoint handed out, "ran after", the state's
/// write generation, this host's registration), made on a thread of their own so that no TPM command waits
/// on the registry: a PostgreSQL that is slow, stopped or unreachable never stalls the guest's TPM.
///
/// Writes are applied in the order they were queued, one at a time. Every one is idempotent and only moves
/// the registry forward. New writes are applied 20 ms after the first of them (at once when a decision waits),
/// so a burst of them (a savevm) costs one wake-up, after the burst. A write that fails because the registry
/// is unavailable (or lost a race with
/// another writer) stays at the head of the queue and is tried again, after 1 s and then every 5 s (sooner
/// when a decision waits for the queue), until it succeeds: after an outage the registry catches up with
/// everything this process saw, in order. A write the registry refuses for another reason (an unknown
/// generation) is logged and dropped.
///
/// The thread starts writing at ``resume()``, which vtpmd calls after `--runas`, so that the registry's
/// connection is made as the user the process runs as.
///
/// A decision reads the registry, so it first waits for the queue to drain (``flush(timeout:)``): a decision
/// never runs on facts older than what this process already knows.
final class RegistryWriter: Sendable {
    enum Write: Sendable, CustomStringConvertible {
        case checkpoint(VMID, generation: UInt64, number: UInt64)
        case markRan(VMID, generation: UInt64)
        case stateWrite(VMID, generation: UInt64, write: UInt64)
        case registerHost(id: String, name: String, publicKey: [UInt8])

        var description: String {
            switch self {
            case .checkpoint(let vm, let generation, let number):
                return "checkpoint \(number) of \(vm) generation \(generation)"
            case .markRan(let vm, let generation): return "ran-after mark of \(vm) generation \(generation)"
            case .stateWrite(let vm, let generation, let write):
                return "state write \(write) of \(vm) generation \(generation)"
            case .registerHost(let id, let name, _): return "registration of host \(id) (\(name))"
            }
        }
    }

    private struct State {
        var queue: [Write] = []
        /// The head of the queue is being applied.
        var busy = false
        var stopped = false
        /// Writing has started (``resume()``).
        var running = false
        /// A caller waits for the queue (``flush(timeout:)``, ``stop(timeout:)``): retry now.
        var urgent = false
        /// The last failure, while the registry is unavailable (for the log and for callers).
        var failing: String? = nil
    }

    /// How long new writes wait for more before they are applied.
    static let batchMilliseconds = 20

    private let registry: any RegistryStore
    private let logger: Logger
    private let state = Mutex(State())
    private let wakeUp = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)

    init(registry: any RegistryStore, logger: Logger) {
        self.registry = registry
        self.logger = logger
    }

    /// Starts the writing thread (once; later calls do nothing).
    func resume() {
        let start = self.state.withLock { state in
            defer { state.running = true }
            return !state.running
        }
        if start { DispatchQueue(label: "vtpm.registry-writer").async { self.work() } }
    }

    /// Queues a write; returns at once.
    func enqueue(_ write: Write) {
        self.state.withLock { $0.queue.append(write) }
        self.wakeUp.signal()
    }

    /// The number of writes not yet in the registry.
    var pending: Int { self.state.withLock { $0.queue.count } }

    /// Why the registry refused the last attempt, while writes wait for it.
    var failure: String? { self.state.withLock { $0.failing } }

    /// Waits until every queued write is in the registry, at most `timeout`.
    /// - Returns: Whether the queue drained.
    func flush(timeout: Duration) -> Bool {
        self.resume()
        let deadline = ContinuousClock.now + timeout
        self.state.withLock { $0.urgent = true }
        self.wakeUp.signal()
        while true {
            let idle = self.state.withLock { $0.queue.isEmpty && !$0.busy }
            if idle { return true }
            if ContinuousClock.now >= deadline { return false }
            sleepBriefly(milliseconds: 2)
        }
    }

    /// Stops the thread after one last try of what is queued (at most `timeout`); logs what could not be
    /// written.
    func stop(timeout: Duration) {
        _ = self.flush(timeout: timeout)
        let lost = self.state.withLock { state in
            state.stopped = true
            return state.queue
        }
        self.wakeUp.signal()
        _ = self.finished.wait(timeout: .now() + .seconds(1))
        for write in lost {
            self.logger.error("registry: unavailable at exit, not recorded: \(write)")
        }
    }

    private func work() {
        var delay = 0
        while true {
            if delay > 0 {
                // Back off, unless a caller waits for the queue (new writes alone do not cut it short).
                let until = DispatchTime.now() + .milliseconds(delay)
                while self.wakeUp.wait(timeout: until) == .success {
                    if self.state.withLock({ $0.urgent || $0.stopped }) { break }
                }
            } else {
                self.wakeUp.wait()
                // New writes wait a moment (a decision does not): a savevm's blobs, the TPM command before it
                // and the writes both cause go out together, after the burst, not beside it.
                let until = DispatchTime.now() + .milliseconds(Self.batchMilliseconds)
                while !self.state.withLock({ $0.urgent || $0.stopped }), self.wakeUp.wait(timeout: until) == .success {}
            }
            // Signals that piled up meanwhile are for the queue, which is read below.
            while self.wakeUp.wait(timeout: .now()) == .success {}
            self.state.withLock { $0.urgent = false }
            while true {
                let next: Write? = self.state.withLock { state in
                    guard !state.stopped, let head = state.queue.first else { return nil }
                    state.busy = true
                    return head
                }
                guard let next else { break }
                let outcome = self.apply(next)
                let recovered: String? = self.state.withLock { state in
                    state.busy = false
                    let was = state.failing
                    switch outcome {
                    case .done, .dropped:
                        state.queue.removeFirst()
                        state.failing = nil
                        return was
                    case .retry(let reason):
                        state.failing = reason
                        return nil
                    }
                }
                if let recovered {
                    self.logger.notice("registry: available again, catching up", metadata: ["was": "\(recovered)"])
                }
                if case .retry = outcome {
                    delay = delay == 0 ? 1000 : 5000
                    break
                }
                delay = 0
            }
            if self.state.withLock({ $0.stopped }) {
                self.finished.signal()
                return
            }
        }
    }

    private enum Outcome {
        case done, dropped
        case retry(String)
    }

    private func apply(_ write: Write) -> Outcome {
        do {
            switch write {
            case .checkpoint(let vm, let generation, let number):
                try self.registry.recordCheckpoint(vmID: vm, generation: generation, number: number)
            case .markRan(let vm, let generation):
                try self.registry.markRan(vmID: vm, generation: generation)
            case .stateWrite(let vm, let generation, let write):
                try self.registry.recordStateWrite(vmID: vm, generation: generation, write: write)
            case .registerHost(let id, let name, let key):
                let record = try self.registry.registerHost(id: id, name: name, publicKey: key)
                if record.isRevoked {
                    self.logger.error(
                        "registry: this host (\(id)) is revoked: other hosts refuse its state blobs",
                        metadata: ["reason": "\(record.revokedReason ?? "")"]
                    )
                }
            }
            return .done
        } catch let error as RegistryError where error.code == .unavailable || error.code == .conflict {
            let reason = error.description
            if self.failure == nil {
                self.logger.error("registry: \(write) waits, the registry is unavailable: \(reason)")
            }
            return .retry(reason)
        } catch {
            self.logger.error("registry: cannot record \(write): \(error)")
            return .dropped
        }
    }
}

/// Sleeps the calling thread.
private func sleepBriefly(milliseconds: Int) {
    _ = DispatchSemaphore(value: 0).wait(timeout: .now() + .milliseconds(milliseconds))
}
