// Package hass builds Home Assistant MQTT discovery for spark2mqtt's
// devices: the entities a device gets by default from its description, the
// richer entities a user declares in the `homeassistant:` section of a
// device in the devices file, and the retained device-based discovery
// payloads that announce them (and remove them again).
//
// It owns the entity model (DeviceConfig, Entity), the strict parsing of
// the `homeassistant:` section from a yaml.v3 node (ParseNode; the bridge's
// devices-file parser calls it for that subtree), and pure functions that
// turn what the bridge knows about a device into one discovery message
// (Build, Discovery.Payload, Discovery.Removing, ConfigTopic). It does not
// publish, subscribe, schedule re-announcements or read files: the bridge
// does that, and decides when a device's description is known.
//
// # Discovery message
//
// One retained message per device on <prefix>/device/<id>/config
// (Home Assistant's "device discovery payload"): the `device` and `origin`
// mappings, the shared `availability` list with the bridge's state topic
// and the device's availability topic and `availability_mode: all` (an
// entity is available only while the bridge runs AND the device is online),
// `qos: 1`, and the `components` keyed by a stable component id. Keys use
// Home Assistant's full names, never the abbreviations (`dev`, `o`, `cmps`,
// `avty` are the same keys abbreviated; Home Assistant accepts both).
//
// Component ids and unique ids come from the device id and the function or
// variable name (defaults) or the entity's key in the devices file
// (declared entities), never from a display name: renaming a device or an
// entity keeps its history in Home Assistant.
//
// Defaults, for every function and variable that no declared entity uses:
//
//	int, double variable  sensor, state_class measurement
//	bool variable         binary_sensor, payload_on "true", payload_off "false"
//	string variable       sensor (the state cut to Home Assistant's 255 characters)
//	function              text: its argument, disabled by default; the state is the
//	                      argument of the last call (from the retained fn/NAME/result)
//	connection            binary_sensor, device_class connectivity, diagnostic; its
//	                      own availability is the bridge's state only, so it shows
//	                      "disconnected" instead of "unavailable" while the device is away
//	find, find_stop       buttons that start and stop the device's rainbow LED
//
// # Removal
//
// An empty retained payload on the config topic removes the device and all
// its entities. A single component is removed, as Home Assistant's
// documentation asks, by publishing the config once with that component
// reduced to its `platform` key, then again without it (Discovery.Removing
// gives the first of the two).
//
// # Concurrency
//
// Everything here is a pure function of its arguments; a DeviceConfig is
// immutable after ParseNode and safe for concurrent use. No goroutines.
package hass
