package loader

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
)

// TCMode selects how TC programs are attached.
type TCMode int

const (
	// TCAuto uses tcx links and falls back to a clsact qdisc where the kernel lacks tcx (< 6.6).
	TCAuto TCMode = iota
	// TCX insists on tcx links.
	TCX
	// TCLegacy always uses clsact qdisc filters (netlink), as kernels before 6.6 must.
	TCLegacy
)

func (m TCMode) String() string {
	switch m {
	case TCAuto:
		return "auto"
	case TCX:
		return "tcx"
	case TCLegacy:
		return "legacy"
	}
	return fmt.Sprintf("TCMode(%d)", int(m))
}

// Option configures Load.
type Option func(*config)

type config struct {
	root   string
	log    *slog.Logger
	tcMode TCMode
}

// WithRoot pins maps and links under dir instead of DefaultRoot.
func WithRoot(dir string) Option { return func(c *config) { c.root = dir } }

// WithLogger sets the logger; the default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// WithTCMode chooses tcx, clsact or automatic selection for TC programs.
func WithTCMode(m TCMode) Option { return func(c *config) { c.tcMode = m } }

// Dataplane is a loaded set of Margay programs and their pinned maps.
type Dataplane struct {
	root   string
	log    *slog.Logger
	tcMode TCMode
	objs   MargayObjects

	// ids caches the kernel's ids of the loaded programs, which do not change while they are
	// loaded: the full pass compares every interface's attachment with them.
	idsMu sync.Mutex
	ids   map[*ebpf.Program]ebpf.ProgramID
}

// Load loads the programs, reusing the maps pinned under the root when their layout matches and
// replacing (or migrating) them when it does not. Nothing is attached yet.
func Load(opts ...Option) (*Dataplane, error) {
	cfg := config{root: DefaultRoot, log: slog.Default()}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.root == "" || !filepath.IsAbs(cfg.root) {
		return nil, fmt.Errorf("load dataplane: bpffs root %q must be an absolute path", cfg.root)
	}
	if err := EnsureBPFFS(cfg.root); err != nil {
		return nil, fmt.Errorf("load dataplane: %w", err)
	}

	spec, err := LoadMargay()
	if err != nil {
		return nil, fmt.Errorf("load dataplane spec: %w", err)
	}

	replacements, err := prepareMaps(spec, cfg.root, cfg.log)
	if err != nil {
		return nil, fmt.Errorf("load dataplane: %w", err)
	}
	defer func() {
		for _, m := range replacements {
			m.Close() // the collection holds its own reference
		}
	}()

	d := &Dataplane{root: cfg.root, log: cfg.log, tcMode: cfg.tcMode}
	err = spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{
		Maps:            ebpf.MapOptions{PinPath: cfg.root},
		MapReplacements: replacements,
	})
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load dataplane programs: %+v", verr)
		}
		return nil, fmt.Errorf("load dataplane programs: %w", err)
	}
	return d, nil
}

// Root is the bpffs directory the maps and links are pinned in.
func (d *Dataplane) Root() string { return d.root }

// Maps are the dataplane's maps; they stay owned by the Dataplane.
func (d *Dataplane) Maps() *MargayMaps { return &d.objs.MargayMaps }

// Programs are the loaded programs; they stay owned by the Dataplane.
func (d *Dataplane) Programs() *MargayPrograms { return &d.objs.MargayPrograms }

// Close releases this process's handles. Pinned maps and links, and so forwarding, stay.
func (d *Dataplane) Close() error {
	return d.objs.Close()
}

// Cleanup detaches every program Margay attached (pinned links, and clsact filters on any
// interface of this network namespace) and removes the root with all its pins.
func Cleanup(root string, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	var errs []error
	if err := detachAllLinks(root, log); err != nil {
		errs = append(errs, err)
	}
	if err := detachAllLegacy(log); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(root); err != nil {
		errs = append(errs, fmt.Errorf("remove pins under %s: %w", root, err))
	}
	return errors.Join(errs...)
}
