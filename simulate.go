package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/event"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// maxSimulateRate bounds --simulate-rate: the simulator cannot go faster.
const maxSimulateRate = 1000

// simulation is an in-process vCenter (govmomi's simulator, VPX model)
// served over HTTPS on loopback, for --simulate and for tests.
type simulation struct {
	model  *simulator.Model
	server *simulator.Server
	// URL is the SDK endpoint, without credentials.
	url      *url.URL
	username string
	password string
}

// startSimulation creates the simulated inventory and starts its server,
// on HTTPS like a real vCenter, with a self-signed certificate.
func startSimulation() (*simulation, error) {
	return startSimulationTLS(new(tls.Config))
}

// startSimulationTLS is startSimulation with the server's TLS settings
// (its certificate); nil serves plain HTTP.
func startSimulationTLS(config *tls.Config) (*simulation, error) {
	return startSimulationOn(config, "")
}

// startSimulationOn is startSimulationTLS listening on host (host:port;
// "" for any port of the loopback address).
func startSimulationOn(config *tls.Config, host string) (*simulation, error) {
	model := simulator.VPX()
	if err := model.Create(); err != nil {
		return nil, fmt.Errorf("create simulator inventory: %w", err)
	}
	if host != "" {
		model.Service.Listen = &url.URL{Host: host}
	}
	model.Service.TLS = config
	server := model.Service.NewServer()
	u := *server.URL
	password, _ := u.User.Password()
	sim := &simulation{model: model, server: server, username: u.User.Username(), password: password}
	u.User = nil
	sim.url = &u
	return sim, nil
}

// useSimulation has cfg connect to sim, in place of the vCenter address
// and credentials that --simulate does not read.
func (cfg *config) useSimulation(sim *simulation) {
	cfg.vcenterURL, cfg.username, cfg.password, cfg.insecure = sim.url, sim.username, sim.password, true
}

// close stops the server and removes the inventory's files.
func (s *simulation) close() {
	s.server.Close()
	s.model.Remove()
}

// client logs in to the simulator with a new session.
func (s *simulation) client(ctx context.Context) (*govmomi.Client, error) {
	u := *s.url
	u.User = url.UserPassword(s.username, s.password)
	c, err := govmomi.NewClient(ctx, &u, true)
	if err != nil {
		return nil, fmt.Errorf("log in to simulator: %w", err)
	}
	return c, nil
}

// generate keeps producing realistic events at about rate operations per
// second (VM power cycles, reconfigurations, logins and logouts, EventEx
// and ExtendedEvent) until ctx is done. Each operation yields one or two
// events.
func (s *simulation) generate(ctx context.Context, rate float64, log *slog.Logger) error {
	c, err := s.client(ctx)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		_ = c.Logout(ctx)
	}()
	vms, err := listVMs(ctx, c)
	if err != nil {
		return err
	}

	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	ops := []func(context.Context, *rand.Rand) error{
		func(ctx context.Context, rnd *rand.Rand) error { return powerCycle(ctx, vms[rnd.IntN(len(vms))]) },
		func(ctx context.Context, rnd *rand.Rand) error { return powerCycle(ctx, vms[rnd.IntN(len(vms))]) },
		func(ctx context.Context, rnd *rand.Rand) error {
			vm := vms[rnd.IntN(len(vms))]
			return waitTask(ctx, "reconfigure", func() (*object.Task, error) {
				return vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{Annotation: fmt.Sprintf("simulated change %d", rnd.IntN(1000))})
			})
		},
		func(ctx context.Context, _ *rand.Rand) error {
			sc, err := s.client(ctx)
			if err != nil {
				return err
			}
			return sc.Logout(ctx)
		},
		func(ctx context.Context, rnd *rand.Rand) error {
			vm := vms[rnd.IntN(len(vms))]
			return postEvent(ctx, c, &types.EventEx{
				EventTypeId: "com.vmware.vc.simulated.HealthChangedEvent",
				Severity:    "info",
				Message:     "simulated health check",
				ObjectId:    vm.Reference().Value,
				ObjectType:  vm.Reference().Type,
			})
		},
		func(ctx context.Context, rnd *rand.Rand) error {
			vm := vms[rnd.IntN(len(vms))]
			return postEvent(ctx, c, &types.ExtendedEvent{
				GeneralEvent:  types.GeneralEvent{Message: "simulated backup completed"},
				EventTypeId:   "com.example.backup.completed",
				ManagedObject: vm.Reference(),
				Data:          []types.ExtendedEventPair{{Key: "result", Value: "success"}},
			})
		},
	}

	interval := time.Duration(float64(time.Second) / rate)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	log.Info("generating simulated events", "rate", rate, "vms", len(vms))
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		if err := ops[rnd.IntN(len(ops))](ctx, rnd); err != nil && ctx.Err() == nil {
			log.Warn("simulated operation failed", "error", err)
		}
	}
}

// listVMs returns the virtual machines of the default datacenter.
func listVMs(ctx context.Context, c *govmomi.Client) ([]*object.VirtualMachine, error) {
	finder := find.NewFinder(c.Client, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return nil, fmt.Errorf("find datacenter: %w", err)
	}
	finder.SetDatacenter(dc)
	vms, err := finder.VirtualMachineList(ctx, "*")
	if err != nil {
		return nil, fmt.Errorf("find virtual machines: %w", err)
	}
	return vms, nil
}

// powerCycle powers vm off if it is on and on if it is off.
func powerCycle(ctx context.Context, vm *object.VirtualMachine) error {
	state, err := vm.PowerState(ctx)
	if err != nil {
		return fmt.Errorf("read power state of %s: %w", vm.Name(), err)
	}
	if state == types.VirtualMachinePowerStatePoweredOn {
		return waitTask(ctx, "power off", func() (*object.Task, error) { return vm.PowerOff(ctx) })
	}
	return waitTask(ctx, "power on", func() (*object.Task, error) { return vm.PowerOn(ctx) })
}

func waitTask(ctx context.Context, what string, start func() (*object.Task, error)) error {
	task, err := start()
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := task.Wait(ctx); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func postEvent(ctx context.Context, c *govmomi.Client, ev types.BaseEvent) error {
	if err := event.NewManager(c.Client).PostEvent(ctx, ev); err != nil {
		return fmt.Errorf("post event: %w", err)
	}
	return nil
}
